from label.cli import run

run()
