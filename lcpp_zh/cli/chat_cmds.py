"""Commands of this group are added to COMMANDS; see lcpp_zh.cli."""

COMMANDS: list = []
