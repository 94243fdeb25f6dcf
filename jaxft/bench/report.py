"""Human-readable tables for the bench results (the JSON line carries everything)."""

from __future__ import annotations

from typing import Any

GiB = 1024 ** 3


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"
    return str(v)


def table(rows: list[tuple[str, Any]], title: str = "") -> None:
    if title:
        print(title)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {_fmt(v)}")


def print_run(what: str, r: dict[str, Any]) -> None:
    c = r.get("config", {})
    shape = c.get("model") or (f"{c.get('arch')} h{c.get('hidden')} L{c.get('layers')} heads {c.get('heads')}/"
                               f"{c.get('kv_heads')}x{c.get('head_dim')} ffn {c.get('ffn')} vocab {c.get('vocab')}")
    if what == "train":
        title = (f"train: {shape}, {c.get('dtype')}, batch {c.get('batch')}x{c.get('seq')}, "
                 f"{'LoRA r=' + str(c.get('lora_rank')) if c.get('lora_rank') else 'full'}, remat {c.get('remat')}, "
                 f"CE chunk {c.get('chunk')}")
        rows = [("tokens/s", r["tokens_per_s"]), ("step s (median)", r["step_s_median"]),
                ("compile s", r["compile_s"]), ("peak RSS MiB", r["peak_rss_mib"]),
                ("device peak MiB", r.get("device_peak_mib")),
                ("model FLOPs/step", r.get("model_flops_per_step")), ("FLOP formula", r.get("flop_formula")),
                ("XLA cost-analysis FLOPs (loop bodies once)", r.get("xla_flops_per_step")),
                (f"matmul peak GFLOP/s ({c.get('dtype')})", r.get("matmul_peak_gflops")), ("MFU", r.get("mfu")),
                ("loss first/last", f"{r.get('loss_first', 0):.4f} / {r.get('loss_last', 0):.4f}")]
    else:
        title = (f"generate: {shape}, {c.get('dtype')}, greedy, prompt {c.get('prompt_len')} + "
                 f"{c.get('new_tokens')} new tokens")
        rows = [("compile s", r["compile_s"]), ("peak RSS MiB", r["peak_rss_mib"]),
                ("weight bytes / decode step", r.get("weight_bytes"))]
        bw = r.get("bandwidth_gbs")
        if bw:
            rows.append(("copy bandwidth GB/s (read+write; read half)", f"{bw['copy']:.1f}; {bw['read']:.1f}"))
        for b, row in r["batches"].items():
            rows += [(f"batch {b}: prefill tok/s", row["prefill_tokens_per_s"]),
                     (f"batch {b}: decode tok/s", row["decode_tokens_per_s"])]
            if "bandwidth_bound_tokens_per_s" in row:
                rows += [(f"batch {b}: bandwidth bound tok/s", row["bandwidth_bound_tokens_per_s"]),
                         (f"batch {b}: decode / bound", row["fraction_of_bound"])]
    if "peer_tokens_per_s" in r:
        rows += [("peer tokens/s (median)", r["peer_tokens_per_s"]), ("peer peak RSS MiB", r["peer_peak_rss_mib"]),
                 ("ratio tokens/s (jaxft / peer)", r["ratio_tokens_per_s"]),
                 ("ratio peak RSS (jaxft / peer)", r["ratio_peak_rss"]), ("peer MFU", r.get("peer_mfu")),
                 ("rounds", r.get("rounds"))]
        for b, ratios in r.get("ratios_by_batch", {}).items():
            rows += [(f"batch {b}: prefill ratio", ratios["prefill_tokens_per_s"]),
                     (f"batch {b}: decode ratio", ratios["decode_tokens_per_s"])]
    table(rows, title)


def print_plan(r: dict[str, Any]) -> None:
    rows = [("mesh", r["mesh"]), ("compile s", r["compile_s"])]
    for k, v in r["per_device_gib"].items():
        rows.append((f"per device {k} GiB", v))
    load = r.get("load_per_device_bytes")
    if load:
        rows += [("load peak per device GiB (streamed)", load["peak_per_device"] / GiB),
                 ("load resident per device GiB", load["resident_per_device"] / GiB),
                 ("load host tensor GiB per process", load["host_per_process"] / GiB)]
    g = r["global_bytes"]
    rows += [("trainable GiB (global)", g["trainable"] / GiB), ("frozen GiB (global)", g["frozen"] / GiB),
             ("optimizer state GiB (global)", g["optimizer_state"] / GiB),
             ("XLA FLOPs per device (loop bodies once)", r["xla_flops_per_device"]),
             ("model FLOPs per step (formula)", r.get("model_flops_per_step"))]
    rows += [(f"fits {name}", ok) for name, ok in r["fits"].items()]
    if r.get("note"):
        rows.append(("note", r["note"]))
    table(rows, f"plan: {r['what']}")
