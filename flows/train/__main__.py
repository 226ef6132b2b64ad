from flows.train.cli import run

run()
