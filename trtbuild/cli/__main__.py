"""`python -m trtbuild.cli`: the `trtbuild` command."""

from trtbuild.cli import main

main()
