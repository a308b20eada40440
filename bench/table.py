#!/usr/bin/env python3
"""Turn the figures of one bench/run.sh run into a markdown table.

Usage: bench/table.py FIGURES.tsv

Each line of FIGURES.tsv names one figure:
  time  ID  LABEL  JSON  COMMAND-NAME  BASE-JSON  BASE-NAME  TARGET-RATIO (- for none)
  plain ID  LABEL  VALUE  BASELINE  RATIO  TARGET  MET
`time` lines read hyperfine --export-json files; results that share a
command name (one per --parameter-scan value) are pooled, so a fresh key per
call still gives one mean and one standard deviation. The ratio is the mean
over the baseline's mean, both measured in the same run of the script; the
ratio of medians is shown too, as it suffers less from a loaded machine.
A target is judged on the ratio of means.
`plain` lines are printed as they are (RSS, purge time, group wall time).
"""

import json
import statistics
import sys


def pooled(path, name):
    with open(path) as f:
        results = json.load(f)["results"]
    times = [
        t
        for r in results
        if r["command"] in (name, name.replace("{i}", r.get("parameters", {}).get("i", "{i}")))
        for t in r["times"]
    ]
    if not times:
        sys.exit(f"{path}: no result named {name!r}")
    sd = statistics.stdev(times) if len(times) > 1 else 0.0
    return (
        statistics.mean(times) * 1000,
        sd * 1000,
        statistics.median(times) * 1000,
        len(times),
    )


def main() -> int:
    print("| # | figure | mean ± σ (median) | baseline | ratio of means (medians) | target | met |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with open(sys.argv[1]) as f:
        for line in f:
            kind, *fields = line.rstrip("\n").split("\t")
            if kind == "time":
                fid, label, js, name, base_js, base_name, target = fields
                mean, sd, median, n = pooled(js, name)
                bmean, bsd, bmedian, _ = pooled(base_js, base_name)
                ratio = mean / bmean
                if target == "-":
                    goal, met = "", ""
                else:
                    goal = f"≤ {target}×"
                    met = "yes" if ratio <= float(target) else "**no**"
                print(
                    f"| {fid} | {label}: `{name}` | {mean:.2f} ± {sd:.2f} ms ({median:.2f}, n={n}) "
                    f"| `{base_name}`: {bmean:.2f} ± {bsd:.2f} ms ({bmedian:.2f}) "
                    f"| {ratio:.2f}× ({median / bmedian:.2f}×) | {goal} | {met} |"
                )
            elif kind == "plain":
                fid, label, value, baseline, ratio, target, met = fields
                print(f"| {fid} | {label} | {value} | {baseline} | {ratio} | {target} | {met} |")
            else:
                sys.exit(f"unknown figure kind {kind!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
