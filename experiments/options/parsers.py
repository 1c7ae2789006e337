"""Flag types of the experiments: comma-separated lists of non-negative integers."""

from __future__ import annotations

from absl import flags


class IntListParser(flags.ListParser):
    """absl parser of comma-separated non-negative integers, e.g. ``3,6,12,3``."""

    def parse(self, argument: str | list) -> list[int]:
        items = super().parse(argument)
        try:
            values = [int(item) for item in items]
        except (TypeError, ValueError):
            values = [-1]
        if any(value < 0 for value in values):
            raise ValueError(f"expected comma-separated integers >= 0, got {argument!r}")
        return values

    def flag_type(self) -> str:
        return "comma separated list of integers"


def define_int_list(name: str, default: list[int] | None, help_text: str,
                    module_name: str) -> flags.FlagHolder:
    """DEFINE a flag holding a list of non-negative ints, owned by `module_name`."""
    return flags.DEFINE(IntListParser(), name, default, help_text,
                        serializer=flags.CsvListSerializer(","), module_name=module_name)
