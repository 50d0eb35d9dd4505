"""Benchmark: peak memory of ``videollama convert`` on full-size frozen encoders, vs a naive conversion.

Inputs (random values, official key layouts and full sizes, written with ``torch.save``):

  * ``eva_vit_g.pth``: EVA ViT-g/14, 40 blocks of width 1408 + EVA-CLIP's final norm (~1.0 B params);
  * ``blip2_pretrained_flant5xxl.pth``: ``{'model': ...}`` with the Q-Former (12 layers, 768 wide),
    query tokens, ``ln_vision`` and a few T5-projection keys;
  * ``imagebind_huge.pth``: the audio (12 x 768) and vision (32 x 1280) encoders; with
    ``--imagebind-other full`` (default) also the text (24 x 1024, 49408-token embedding), depth,
    thermal and IMU trunks at their real widths, so the file is about as large as the real one
    (~1.2 B params); the converter ignores those, but it must read past them;
  * ``VL_*.pth`` / ``AL_*.pth``: the branch checkpoints as LAVIS saves them (small);
  * a tiny Hugging Face LLaMA folder (the LLM is not what this benchmark is about: a 7B LLM would
    be converted by the same streaming writer, tensor by tensor).

Key layouts come from the converter's own helpers (``make_official_*_state_dict(device='meta')``);
values are N(0, 0.02) noise filled directly in the file dtype (fast; the converter never looks at
values). ``--dtype released`` (default) stores each file in the dtype we understand the released
file to have: ``eva_vit_g.pth`` fp16 (to our understanding the released file is half precision,
~2 GB for 1 B parameters), the others fp32.
``--dtype fp16`` halves the inputs (faster to generate, less disk). ``--components vision`` writes
only EVA + BLIP-2 + VL and converts with ``--branches vl`` (no ImageBind): about a third of the work.

Measured, each in its own subprocess (the inputs are generated in another one, so the benchmark
process stays small). Peak RSS = the process's own ``VmHWM`` (the kernel's exact high-water mark of
its resident set, written by a small wrapper at exit); anonymous = private memory (heap) and
mapped-file = resident pages of memory-mapped files, both polled every 20 ms:

  * ``import torch, videollama.convert.build``: the floor (interpreter + torch);
  * ``python -m videollama convert ... --dtype bf16``: the real converter (lazy memory-mapped reads,
    one tensor cast at a time into streamed safetensors shards, maps released every 256 MiB);
  * naive: ``torch.load(mmap=False)`` of every file, the same key tables (so the same tensors), every
    tensor cast to bf16 in memory, ``safetensors.torch.save_file`` of the whole dict (what a
    straightforward script does).

Disk: the inputs (~7.5 GB with the defaults) + two outputs (~2.3 GB each) in ``--workdir``
(removed at the end unless ``--keep``). Time: 3-6 minutes on 2 cores.

Run: ``python benchmarks/bench_convert.py [--dtype released|fp32|fp16] [--components all|vision]
[--imagebind-other full|none] [--workdir DIR] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from videollama.config import VideoLlamaConfig  # noqa: E402
from videollama.convert.writer import DEFAULT_RELEASE_EVERY  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RELEASED = {"eva": "fp16", "blip2": "fp32", "imagebind": "fp32", "vl": "fp32", "al": "fp32"}
FILE_NAMES = {"eva": "eva_vit_g.pth", "blip2": "blip2_pretrained_flant5xxl.pth", "imagebind": "imagebind_huge.pth",
              "vl": "VL_LLaMA_2_7B_Finetuned.pth", "al": "AL_LLaMA_2_7B_Finetuned.pth"}
OPTIONS = {"eva": "--eva-vit", "blip2": "--blip2", "imagebind": "--imagebind", "vl": "--vl-ckpt", "al": "--al-ckpt"}
OUT_DTYPE = "bf16"
KEEP_FP32 = ("audio_encoder.log_logit_scale",)
POLL_S = 0.02
# Runs a module or script and writes its own peak RSS (VmHWM of this process image) to $BENCH_PEAK_FILE at
# exit. The kernel's ru_maxrss (wait4/getrusage) is no use here: exec keeps the forking parent's
# high-water mark, so a child of a big parent would report the parent's size.
WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    with open('/proc/self/status') as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
    with open(os.environ['BENCH_PEAK_FILE'], 'w') as f:
        f.write(str(hwm))
atexit.register(_peak)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target] + sys.argv[3:]
runpy.run_module(target, run_name='__main__', alter_sys=True) if kind == 'module' else runpy.run_path(target, run_name='__main__')
"""

# ImageBind-Huge's other modalities (official imagebind_model.py): (layers, width, add_bias_kv).
OTHER_TRUNKS = {"text": (24, 1024, False), "depth": (12, 384, True), "thermal": (12, 768, True), "imu": (6, 512, True)}
TEXT_VOCAB, TEXT_CONTEXT = 49408, 77


# --------------------------------------------------------------------------------------------- inputs
def other_modality_shapes() -> dict[str, tuple[int, ...]]:
    """Full-size text/depth/thermal/IMU keys of imagebind_huge.pth (ignored by the converter)."""
    shapes: dict[str, tuple[int, ...]] = {
        "modality_preprocessors.text.token_embedding.weight": (TEXT_VOCAB, 1024),
        "modality_preprocessors.text.pos_embed": (1, TEXT_CONTEXT, 1024),
        "modality_preprocessors.text.mask": (TEXT_CONTEXT, TEXT_CONTEXT),
        "modality_heads.text.proj.0.weight": (1024,), "modality_heads.text.proj.0.bias": (1024,),
        "modality_heads.text.proj.1.weight": (1024, 1024),
        "modality_postprocessors.text.1.log_logit_scale": (),
        "modality_preprocessors.depth.rgbt_stem.proj.weight": (384, 1, 16, 16),
        "modality_preprocessors.depth.cls_token": (1, 1, 384),
        "modality_preprocessors.depth.pos_embedding_helper.pos_embed": (1, 197, 384),
        "modality_heads.depth.2.weight": (1024, 384),
        "modality_preprocessors.thermal.rgbt_stem.proj.weight": (768, 1, 16, 16),
        "modality_preprocessors.thermal.cls_token": (1, 1, 768),
        "modality_preprocessors.thermal.pos_embedding_helper.pos_embed": (1, 197, 768),
        "modality_heads.thermal.2.weight": (1024, 768),
        "modality_preprocessors.imu.imu_stem.proj.weight": (512, 48),
        "modality_preprocessors.imu.cls_token": (1, 1, 512),
        "modality_preprocessors.imu.pos_embedding_helper.pos_embed": (1, 251, 512),
        "modality_heads.imu.3.weight": (1024, 512),
    }
    for modality, (layers, width, bias_kv) in OTHER_TRUNKS.items():
        for i in range(layers):
            p = f"modality_trunks.{modality}.blocks.{i}."
            shapes.update({p + "norm_1.weight": (width,), p + "norm_1.bias": (width,),
                           p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                           p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                           p + "norm_2.weight": (width,), p + "norm_2.bias": (width,),
                           p + "mlp.fc1.weight": (4 * width, width), p + "mlp.fc1.bias": (4 * width,),
                           p + "mlp.fc2.weight": (width, 4 * width), p + "mlp.fc2.bias": (width,)})
            if bias_kv:
                shapes.update({p + "attn.bias_k": (1, 1, width), p + "attn.bias_v": (1, 1, width)})
    return shapes


def materialise(meta: dict[str, torch.Tensor], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Real tensors for a 'meta' state dict: float ones N(0, 0.02) in ``dtype``, others as the helpers make them."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in meta.items():
        if key.endswith("position_ids"):
            out[key] = torch.arange(t.shape[-1]).reshape(t.shape)
        elif t.dtype.is_floating_point:
            out[key] = torch.empty(t.shape, dtype=dtype).normal_(0.0, 0.02, generator=generator)
        else:
            out[key] = torch.zeros(t.shape, dtype=t.dtype)
    return out


@dataclass
class InputFile:
    name: str
    path: Path
    dtype: str
    params: int
    bytes: int
    largest: tuple[str, int] = ("", 0)  # (key, bytes)
    seconds: float = 0.0


def official_config(llm: dict) -> VideoLlamaConfig:
    cfg = VideoLlamaConfig()  # official widths of every frozen encoder
    cfg.llm = dict(llm)
    return cfg


def write_inputs(root: Path, components: list[str], dtype_choice: str, imagebind_other: bool) -> tuple[dict[str, InputFile], Path]:
    """The tiny LLM folder and every official file (one state dict in memory at a time)."""
    from convert_fixtures import write_llm_folder
    from videollama.convert.imagebind import make_official_imagebind_state_dict
    from videollama.convert.lavis import make_official_blip2_state_dict, make_official_eva_state_dict
    from videollama.convert.official import make_official_branch_state_dict, make_official_checkpoint
    from videollama.presets import tiny
    from videollama.tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(root / "spm")
    llm_config = tiny(vocab_size=tokenizer.vocab_size).llm
    llm_dir = root / "llama-2-tiny-chat-hf"
    write_llm_folder(llm_dir, root / "spm", llm_config)
    cfg = official_config(llm_config)

    def meta(name: str) -> dict[str, torch.Tensor]:
        if name == "eva":
            return make_official_eva_state_dict(cfg.vision, device="meta", head=True)
        if name == "blip2":
            return make_official_blip2_state_dict(cfg, device="meta")
        if name == "imagebind":
            state = make_official_imagebind_state_dict(cfg.imagebind, device="meta", other_modalities=not imagebind_other)
            if imagebind_other:
                state.update({k: torch.empty(s, device="meta") for k, s in other_modality_shapes().items()})
            return state
        return make_official_branch_state_dict(name, cfg, device="meta")

    files: dict[str, InputFile] = {}
    for seed, name in enumerate(components):
        start = time.perf_counter()
        dtype = RELEASED[name] if dtype_choice == "released" else dtype_choice
        state = materialise(meta(name), DTYPES[dtype], seed)
        params = sum(t.numel() for t in state.values())
        largest = max(((k, t.numel() * t.element_size()) for k, t in state.items()), key=lambda kv: kv[1])
        payload = {"eva": state, "imagebind": state, "blip2": {"model": state}}.get(name)
        if payload is None:
            payload = make_official_checkpoint(state)
        path = root / FILE_NAMES[name]
        torch.save(payload, path)
        del state, payload
        files[name] = InputFile(name, path, dtype, params, path.stat().st_size, largest, time.perf_counter() - start)
        print(f"  wrote {path.name}: {params / 1e6:.0f} M params, {files[name].bytes / 1e9:.2f} GB {dtype} "
              f"in {files[name].seconds:.0f} s", flush=True)
    return files, llm_dir


# --------------------------------------------------------------------------------------------- measuring
@dataclass
class Measure:
    label: str
    seconds: float
    peak_rss: int  # bytes: VmHWM of the process (the kernel's exact high-water mark of its resident set)
    peak_anon: int = 0  # bytes: max RssAnon polled
    peak_file: int = 0  # bytes: max RssFile polled (memory-mapped file pages resident)
    returncode: int = 0
    log: str = ""
    extra: dict = field(default_factory=dict)


def _proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def measure(label: str, kind: str, target: str, args: list[str], log_path: Path, env: dict) -> Measure:
    """Run a module (``kind='module'``) or script through WRAPPER: wall time, exact peak RSS, polled peaks."""
    peak_path = log_path.with_suffix(".peak")
    env = dict(env, BENCH_PEAK_FILE=str(peak_path))
    cmd = [sys.executable, "-c", WRAPPER, kind, target, *args]
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak_anon = peak_mapped = 0
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            s = _proc_status(proc.pid)
            peak_anon = max(peak_anon, s.get("RssAnon", 0))
            peak_mapped = max(peak_mapped, s.get("RssFile", 0))
            time.sleep(POLL_S)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    hwm = int(peak_path.read_text()) if peak_path.exists() else 0
    return Measure(label, seconds, hwm, peak_anon, peak_mapped, proc.returncode, log_path.read_text()[-4000:])


def safetensors_summary(folder: Path) -> tuple[int, int, tuple[str, int]]:
    """(bytes of *.safetensors, tensors, largest tensor (name, bytes)) read from the headers."""
    total, count, largest = 0, 0, ("", 0)
    for path in sorted(folder.glob("*.safetensors")):
        total += path.stat().st_size
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            count += 1
            size = entry["data_offsets"][1] - entry["data_offsets"][0]
            if size > largest[1]:
                largest = (key, size)
    return total, count, largest


# --------------------------------------------------------------------------------------------- naive baseline
def naive_convert(out: Path, llm_dir: Path, files: dict[str, str], imagebind_vision: bool) -> None:
    """torch.load (no mmap) every file, same key tables, cast everything to bf16 in memory, save_file once."""
    from safetensors.torch import save_file

    from videollama.convert.build import _imagebind
    from videollama.convert.lavis import convert_eva_state_dict, convert_lavis_blip2_state_dict
    from videollama.convert.official import convert_official_checkpoint

    llm = json.loads((llm_dir / "config.json").read_text())
    cfg = official_config({k: v for k, v in llm.items() if not k.startswith("_")})
    cfg.with_audio = "imagebind" in files
    cfg.with_imagebind_vision = imagebind_vision

    def load(name: str) -> dict:
        obj = torch.load(files[name], map_location="cpu", weights_only=True, mmap=False)
        return obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj

    loaded = {name: load(name) for name in files}  # everything in memory, as torch.load gives it
    ours = {}
    for name, state in loaded.items():
        if name == "eva":
            part, _ = convert_eva_state_dict(state, cfg.vision, source=name, allow_missing=True)
        elif name == "blip2":
            part, _ = convert_lavis_blip2_state_dict(state, cfg, source=name, allow_missing=True)
        elif name == "imagebind":
            part, _ = _imagebind(state, cfg, True, name)
        else:
            part, _ = convert_official_checkpoint(state, name, cfg, source=name, allow_missing=True)
        ours.update(part)
    target = DTYPES[OUT_DTYPE]
    cast = {}
    for key, lazy in ours.items():
        value = lazy.load() if hasattr(lazy, "load") else lazy
        keep = key in KEEP_FP32 or not value.dtype.is_floating_point
        cast[key] = value.contiguous() if keep else value.to(target).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(cast, str(out / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------- main
def gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=["released", "fp32", "fp16", "bf16"], default="released",
                        help="dtype of the generated input files (default: as released: EVA fp16, others fp32)")
    parser.add_argument("--components", choices=["all", "vision"], default="all",
                        help="all: EVA + BLIP-2 + ImageBind + VL + AL (--branches both); vision: EVA + BLIP-2 + VL "
                             "(--branches vl)")
    parser.add_argument("--imagebind-other", choices=["full", "none"], default="full",
                        help="full: imagebind_huge.pth also holds the text/depth/thermal/IMU trunks at full size "
                             "(like the real file); none: only small placeholders for them")
    parser.add_argument("--imagebind-vision", action="store_true",
                        help="also convert ImageBind's vision encoder (convert --imagebind-vision)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir in /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--naive-worker", nargs=3, metavar=("OUT", "LLM_DIR", "FILES_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--generate-worker", metavar="DIR", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    components = ["eva", "blip2", "vl"] + (["imagebind", "al"] if args.components == "all" else [])

    if args.naive_worker:
        out, llm_dir, files = args.naive_worker
        naive_convert(Path(out), Path(llm_dir), json.loads(files), args.imagebind_vision)
        return
    if args.generate_worker:
        files, llm_dir = write_inputs(args.generate_worker, components, args.dtype, args.imagebind_other == "full")
        manifest = {"llm_dir": str(llm_dir), "files": {n: {**vars(f), "path": str(f.path)} for n, f in files.items()}}
        (args.generate_worker / "manifest.json").write_text(json.dumps(manifest))
        return

    workdir = Path(tempfile.mkdtemp(prefix="videollama-bench-convert-", dir=args.workdir))
    print(f"torch {torch.__version__}, cpus {os.cpu_count()}, workdir {workdir}")
    print(f"inputs: {args.dtype} dtypes, components {args.components}, ImageBind other modalities "
          f"{args.imagebind_other}; output {OUT_DTYPE}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    try:
        print("generating the inputs (in a subprocess) ...", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--generate-worker", str(workdir),
                        "--dtype", args.dtype, "--components", args.components,
                        "--imagebind-other", args.imagebind_other], check=True, env=env)
        manifest = json.loads((workdir / "manifest.json").read_text())
        llm_dir = Path(manifest["llm_dir"])
        files = {n: InputFile(**{**f, "path": Path(f["path"]), "largest": tuple(f["largest"])})
                 for n, f in manifest["files"].items()}
        gen_s = time.perf_counter() - started
        for f in files.values():  # the converter and the baseline both read from the page cache
            subprocess.run(["cat", str(f.path)], stdout=subprocess.DEVNULL, check=True)

        floor = measure("floor: import torch + videollama.convert.build", "module", "videollama.convert.build", [],
                        workdir / "floor.log", env)
        out = workdir / "converted"
        convert_args = ["convert", "--llm", str(llm_dir), "--out", str(out), "--dtype", OUT_DTYPE,
                        "--branches", "both" if args.components == "all" else "vl"]
        for name, f in files.items():
            convert_args += [OPTIONS[name], str(f.path)]
        if args.imagebind_vision:
            convert_args.append("--imagebind-vision")
        print("running videollama convert ...", flush=True)
        ours = measure("videollama convert", "module", "videollama", convert_args, workdir / "convert.log", env)
        if ours.returncode:
            print(ours.log)
            raise SystemExit(f"videollama convert failed (exit {ours.returncode})")
        out_bytes, out_tensors, out_largest = safetensors_summary(out)
        shutil.rmtree(out)  # disk: keep at most one output at a time

        naive = None
        if not args.no_naive:
            print("running the naive baseline ...", flush=True)
            naive_out = workdir / "naive"
            worker = ["--naive-worker", str(naive_out), str(llm_dir), json.dumps({n: str(f.path) for n, f in files.items()})]
            if args.imagebind_vision:
                worker.append("--imagebind-vision")
            naive = measure("naive: torch.load + cast + save_file", "path", str(Path(__file__).resolve()), worker,
                            workdir / "naive.log", env)
            if naive.returncode:
                print(naive.log)
                raise SystemExit(f"naive baseline failed (exit {naive.returncode})")
            naive.extra["out"] = safetensors_summary(naive_out)
            shutil.rmtree(naive_out)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    in_bytes = sum(f.bytes for f in files.values())
    largest_in = max((f.largest + (f.path.name,) for f in files.values()), key=lambda t: t[1])
    print()
    print(f"Inputs (generated in {gen_s:.0f} s; random values, official layouts and sizes):")
    print()
    print("| file | dtype | params | size GB | largest tensor |")
    print("|---|---|---|---|---|")
    for f in files.values():
        print(f"| {f.path.name} | {f.dtype} | {f.params / 1e6:,.0f} M | {gb(f.bytes)} | "
              f"{f.largest[0]} ({f.largest[1] / 2**20:.0f} MiB) |")
    print(f"| **total** (+ tiny LLM folder) | | {sum(f.params for f in files.values()) / 1e6:,.0f} M | "
          f"**{gb(in_bytes)}** | |")
    print()
    print(f"Output: {out_tensors} tensors, {gb(out_bytes)} GB {OUT_DTYPE} safetensors; largest output tensor "
          f"{out_largest[0]} ({out_largest[1] / 2**20:.0f} MiB); largest input tensor {largest_in[0]} in "
          f"{largest_in[2]} ({largest_in[1] / 2**20:.0f} MiB); the converter releases its maps every "
          f"{DEFAULT_RELEASE_EVERY / 2**20:.0f} MiB read")
    print()
    print("| run | seconds | peak RSS GB | peak anonymous GB | peak mapped-file GB | peak RSS / output size | "
          "peak RSS / inputs size |")
    print("|---|---|---|---|---|---|---|")
    rows = [floor, ours] + ([naive] if naive else [])
    for m in rows:
        print(f"| {m.label} | {m.seconds:.1f} | {gb(m.peak_rss)} | {gb(m.peak_anon)} | {gb(m.peak_file)} | "
              f"{m.peak_rss / out_bytes:.2f} | {m.peak_rss / in_bytes:.2f} |")
    print()
    above = ours.peak_rss - floor.peak_rss
    print(f"converter: peak RSS {gb(ours.peak_rss)} GB = floor {gb(floor.peak_rss)} GB + {above / 2**20:.0f} MiB "
          f"({above / out_bytes * 100:.1f}% of the output size, {above / max(out_largest[1], 1):.0f}x the largest "
          f"output tensor, {above / max(largest_in[1], 1):.1f}x the largest input tensor)")
    if naive:
        n_bytes = naive.extra["out"][0]
        print(f"naive: peak RSS {gb(naive.peak_rss)} GB = {naive.peak_rss / ours.peak_rss:.1f}x the converter's; "
              f"output {gb(n_bytes)} GB ({naive.extra['out'][1]} tensors: the converter's minus the tiny LLM's "
              f"{out_tensors - naive.extra['out'][1]})")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
