"""`peft-bench cache`: where the cache is and how big, or clear it."""

from __future__ import annotations


def add(sub) -> None:
    cch = sub.add_parser("cache", help="the cache (tokenised data, plan prices and prompt lengths): where it is and "
                                       "how big, or clear it")
    cch.add_argument("action", choices=["info", "clear"])
    cch.set_defaults(func=command)


def command(args) -> int:
    from bench.tasks import cache

    where = cache.root().parent
    if args.action == "clear":
        removed, freed = cache.clear()
        print(f"removed {removed} cache file(s) (tokenised features, plan prices and prompt lengths), "
              f"{freed / 2**20:.1f} MB, from {where}")
        return 0
    for kind in cache.KINDS:
        entries = cache.entries(kind)
        print(f"{cache.root(kind)}: {len(entries)} file(s), {sum(p.stat().st_size for p in entries) / 2**20:.1f} MB")
    print(f"(set PEFT_BENCH_CACHE to move {where})")
    return 0
