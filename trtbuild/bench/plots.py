"""PNG plots of a bench run: TTFT and ITL distributions, throughput vs concurrency, latency vs
throughput. matplotlib (Agg, no display) is imported only here."""

from __future__ import annotations

from pathlib import Path


def write_plots(report: dict, records: list[dict], out_dir: Path) -> list[Path]:
    """Write the plots that have data (none when no request succeeded); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    label = {}
    for r in report["results"]:
        load = r["load"]
        label[str(sorted(load.items()))] = (f"concurrency {load['concurrency']}" if "concurrency" in load
                                            else f"{load['request_rate']} req/s")
    written = []

    def save(fig, ax, name: str) -> None:  # every plot: legend, tight layout, PNG, figure closed
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)

    for metric, title, name in (("ttft", "Time to first token", "ttft.png"), ("itl", "Inter-token latency", "itl.png")):
        import numpy as np

        series = {text: [x[metric] * 1000 for x in records
                         if str(sorted(x["load"].items())) == key and x.get(metric) is not None]
                  for key, text in label.items()}
        everything = [v for vs in series.values() for v in vs]
        if not everything:  # no request measured this (all failed, or one token each): no empty plot
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        bins = np.histogram_bin_edges(everything, bins=30)  # shared by every load point
        for text, values in series.items():
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=text)
        ax.set_title(f"{title} distribution")
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("requests")
        save(fig, ax, name)

    results = [r for r in report["results"] if r.get("output_token_throughput_per_s")]
    conc = [r for r in results if "concurrency" in r["load"]]
    if conc:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([r["load"]["concurrency"] for r in conc], [r["output_token_throughput_per_s"] for r in conc],
                marker="o", label="output tokens/s")
        ax.set_title("Output token throughput vs concurrency")
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("output tokens/s")
        save(fig, ax, "throughput_vs_concurrency.png")
    if results:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [r["output_token_throughput_per_s"] for r in results]
        ax.plot(xs, [r["request_latency_ms"]["p50"] for r in results], marker="o", label="request latency p50")
        ax.plot(xs, [r["request_latency_ms"]["p99"] for r in results], marker="s", label="request latency p99")
        ax.set_title("Latency vs throughput")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel("request latency (ms)")
        save(fig, ax, "latency_vs_throughput.png")
    return written
