"""`python -m lcpp_zh`: the lcpp-zh command line."""

from lcpp_zh.cli import main

main()
