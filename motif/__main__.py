from motif.cli import main
from motif.teardown import run_main

run_main(main)
