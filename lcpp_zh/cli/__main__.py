"""`python -m lcpp_zh.cli`: the lcpp-zh command line."""

from lcpp_zh.cli import main

main()
