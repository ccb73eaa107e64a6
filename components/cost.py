"""Cost and capacity of a stack before `pulumi up`: TPU chips, the quota they need, and $/hour.

`python -m components.cost --stack llama31-405b-v6e16 [--stack ...]` (or `make cost STACK=...`)
prints each stack and, for several, what they need together per region and quota id; the same
estimate is the `cost_estimate` stack output. Prices come from the catalog table (its source and
date are printed with every figure); only TPU chips are counted (the CPU system pool, NAT, storage
and network are small next to them and are not included).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from components import catalog
from components.config import StackConfig
from components.stack_file import load_for_command

REPO_ROOT = Path(__file__).resolve().parent.parent

# Which price column a capacity type is billed at; reservation and flex-start are billed differently
# (commitments, Dynamic Workload Scheduler prices) and the on-demand price bounds them from above.
_PRICE_COLUMN = {"on-demand": 0, "reservation": 0, "flex-start": 0, "spot": 1}
_PRICE_NOTE = {
    "on-demand": "on-demand list price",
    "spot": "spot price (varies; preemptible)",
    "reservation": "on-demand list price (your commitment's price applies instead)",
    "flex-start": "on-demand list price, an upper bound (flex-start is billed at a discount)",
}


@dataclass(frozen=True)
class CostEstimate:
    stack: str
    generation: str
    region: str
    capacity: str
    chips_per_slice: int
    slices: int  # running with the initial replica count
    slices_max: int  # all TPU pools at full size (autoscaling max_replicas)
    chips: int
    chips_max: int
    usd_per_chip_hour: float | None  # None: the region has no price in the catalog
    usd_per_hour: float | None
    usd_per_hour_max: float | None
    usd_per_month: float | None  # 730 h at the initial replica count
    price_basis: str
    quota_id: str  # Compute Engine quota the chips count against (region-wide)
    quota_chips: int  # what the quota must allow: every pool at full size
    price_source: str = catalog.PRICE_SOURCE
    quota_source: str = catalog.QUOTA_SOURCE


def estimate(c: StackConfig) -> CostEstimate:
    gen = c.generation
    preemptible = c.tpu.capacity in ("spot", "flex-start")
    prices = catalog.TPU_PRICES_PER_CHIP_HOUR[gen.name].get(c.region)
    per_chip = prices[_PRICE_COLUMN[c.tpu.capacity]] if prices is not None else None
    chips = c.always_on_slices * c.chips_per_slice
    chips_max = c.slice_count * c.chips_per_slice
    hourly = None if per_chip is None else round(per_chip * chips, 2)
    return CostEstimate(
        stack=c.stack,
        generation=gen.name,
        region=c.region,
        capacity=c.tpu.capacity,
        chips_per_slice=c.chips_per_slice,
        slices=c.always_on_slices,
        slices_max=c.slice_count,
        chips=chips,
        chips_max=chips_max,
        usd_per_chip_hour=per_chip,
        usd_per_hour=hourly,
        usd_per_hour_max=None if per_chip is None else round(per_chip * chips_max, 2),
        usd_per_month=None if hourly is None else round(hourly * catalog.HOURS_PER_MONTH, 0),
        price_basis=_PRICE_NOTE[c.tpu.capacity],
        quota_id=gen.quota_preemptible if preemptible else gen.quota_on_demand,
        quota_chips=chips_max,
    )


def as_output(e: CostEstimate) -> dict[str, object]:
    """The `cost_estimate` stack output."""
    return asdict(e)


def _usd(value: float | None) -> str:
    return "n/a (no price for this region in the catalog)" if value is None else f"${value:,.2f}"


def report(estimates: Sequence[CostEstimate]) -> str:
    lines: list[str] = []
    for e in estimates:
        slices = f"{e.slices} x {e.chips_per_slice}-chip {e.generation} slice(s)"
        lines += [
            f"stack {e.stack}: {e.chips} TPU {e.generation} chips ({slices}, {e.capacity}) in {e.region}",
            f"  price: {_usd(e.usd_per_chip_hour)} per chip-hour ({e.price_basis})",
            f"  cost:  {_usd(e.usd_per_hour)}/hour, {_usd(e.usd_per_month)}/month (730 h)",
        ]
        if e.chips_max != e.chips:
            lines.append(
                f"         {_usd(e.usd_per_hour_max)}/hour with all {e.chips_max} chips (autoscaling max)"
            )
        lines.append(f"  quota: {e.quota_chips} chips of {e.quota_id} in {e.region}")
    if len(estimates) > 1:
        together: dict[tuple[str, str], int] = defaultdict(int)
        for e in estimates:
            together[(e.region, e.quota_id)] += e.quota_chips
        hourly = [e.usd_per_hour for e in estimates]
        total = None if None in hourly else round(sum(h for h in hourly if h is not None), 2)
        lines.append(f"together: {_usd(total)}/hour")
        lines += [
            f"  quota: {chips} chips of {quota} in {region}"
            for (region, quota), chips in sorted(together.items())
        ]
    lines += [f"prices: {catalog.PRICE_SOURCE}", f"quota ids: {catalog.QUOTA_SOURCE}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.cost", description=__doc__)
    parser.add_argument(
        "--stack", action="append", required=True, help="stack name (stacks/Pulumi.<stack>.yaml); repeatable"
    )
    args = parser.parse_args(argv)
    estimates = []
    for stack in args.stack:
        c = load_for_command(REPO_ROOT / "stacks" / f"Pulumi.{stack}.yaml")
        if c is None:
            return 2
        estimates.append(estimate(c))
    sys.stdout.write(report(estimates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
