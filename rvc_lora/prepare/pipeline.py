"""``run_prepare``: recordings folder -> RVC experiment folder (audio, f0, content features, index).

Stages, each with a progress bar and resumable (finished work is skipped on re-runs):

1. ingest   (worker processes, ``data.num_workers``): decode, high-pass, slice, cut, normalise, write
            the model-rate and 16 kHz WAVs (see :mod:`rvc_lora.prepare.ingest`);
   then the usable audio is checked against ``data.min_total_seconds``;
2. pitch    (``model.f0`` only): f0 in Hz and coarse pitch per piece (CPU methods in the worker pool);
3. content  (main process, batched): HuBERT features, 256-d (v1) or 768-d (v2);
4. finish   manifest.csv, filelist.txt (train split, plus RVC's silence piece twice), experiment.json and,
            with ``data.build_index``, the faiss index over the train features (not the silence piece's).

Checks that need no audio (content model present, pitch method usable, input folder) run first.
Under torchrun each rank takes every WORLD_SIZE-th file and the ranks meet over a gloo process group; see
:mod:`rvc_lora.prepare.sharding`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from rvc_lora.data.experiment import (
    FEATURE_DIMS,
    MUTE_COPIES,
    MUTE_NAME,
    ExperimentInfo,
    ExperimentLayout,
    ManifestRow,
    write_filelist,
    write_info,
    write_manifest,
)
from rvc_lora.prepare import sharding
from rvc_lora.prepare.features import F0Stats, content_stage, default_device, index_stage, pitch_stage
from rvc_lora.prepare.ingest import (
    FileResult,
    IngestSettings,
    IngestTask,
    cached_result,
    count_seconds,
    ingest_file,
)
from rvc_lora.prepare.mute import mute_row, write_mute_piece
from rvc_lora.prepare.report import PrepareReport
from rvc_lora.prepare.sources import find_audio_files, fingerprint
from rvc_lora.utils import RVCLoraError, atomic_write, remove_stale_temp_files

STATE_DIR = ".prepare"
# Less input than this is decoded in-process: starting worker processes (each imports torch) costs more.
POOL_MIN_BYTES = 16 * 1024 * 1024


def ingest_settings(cfg: DictConfig) -> IngestSettings:
    """The ingest parameters from ``cfg.data`` and ``cfg.model.sample_rate``."""
    data, slicer = cfg.data, cfg.data.slicer
    return IngestSettings(
        sample_rate=cfg.model.sample_rate,
        highpass_hz=data.highpass_hz,
        threshold_db=slicer.threshold_db,
        min_length_ms=slicer.min_length_ms,
        min_interval_ms=slicer.min_interval_ms,
        hop_ms=slicer.hop_ms,
        max_sil_kept_ms=slicer.max_sil_kept_ms,
        piece_seconds=data.piece_seconds,
        overlap_seconds=data.overlap_seconds,
        max_peak=data.max_peak,
        normalize_alpha=data.normalize_alpha,
        min_piece_seconds=data.min_piece_seconds,
        long_file_seconds=data.long_file_minutes * 60.0,
        chunk_seconds=data.chunk_seconds,
    )


def resolve_pitch_method(cfg: DictConfig) -> str:
    """``pitch.method``, with ``auto`` = rmvpe when ``pitch.rmvpe_path`` is set, else fcpe."""
    from rvc_lora.features.pitch import default_pitch_method

    method = str(cfg.pitch.method)  # a PitchMethod: the schema allows only known methods
    return default_pitch_method(cfg.pitch.rmvpe_path) if method == "auto" else method


def check_content_path(path) -> str:
    """Raise ``ContentModelMissing`` (with download advice) unless ``content.path`` exists."""
    from rvc_lora.features.content import load_content_encoder

    if path is None or str(path) == "" or not Path(str(path)).expanduser().exists():
        load_content_encoder(path)  # raises ContentModelMissing without loading anything
    return str(Path(str(path)).expanduser())


def _progress(enabled: bool, desc: str, unit: str):
    def wrap(iterable: Iterable, total: int) -> Iterable:
        if not enabled:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

    return wrap


def _clean_stray_temps(layout: ExperimentLayout, older_than: float) -> None:
    """Remove temporary files (``.<name>.*.tmp``) left by a killed run."""
    for folder in [layout.root, *(layout.root / d for d in ("0_gt_wavs", "1_16k_wavs", "2a_f0", "2b-f0nsf",
                                                            "3_feature256", "3_feature768")),
                   layout.root / STATE_DIR, layout.root / STATE_DIR / "files"]:
        remove_stale_temp_files(folder, ["*"], older_than)


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _executor(num_workers: int) -> Executor | None:
    if num_workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"))


def _piece_key(name: str) -> tuple[int, int]:
    a, _, b = name.partition("_")
    return int(a), int(b) if b.isdigit() else -1


def choose_validation(names: list[str], count: int) -> set[str]:
    """``count`` pieces spread evenly over the sorted ``names`` (never all of them; deterministic)."""
    names = sorted(names, key=_piece_key)
    k = max(0, min(int(count), len(names) - 1))
    return {names[int((i + 0.5) * len(names) / k)] for i in range(k)} if k else set()


def _file_rows(res: FileResult, speaker_id: int, stats: dict[str, F0Stats], errors: dict[str, str],
               warnings: str) -> list[ManifestRow]:
    if res.status == "error" or (res.status == "skipped" and not res.pieces):
        problem = "; ".join(p for p, _ in res.problems)
        return [ManifestRow(name=str(res.file_index), source=res.source, speaker_id=speaker_id,
                            status=res.status, split="", problem=problem)]
    rows = []
    for piece in res.pieces:
        st = stats.get(piece.name, F0Stats())
        status, problem, split = piece.status, piece.problem, "train"
        if status == "ok" and piece.name in errors:
            status, problem = "error", errors[piece.name]
        if status == "ok":
            problem = warnings
        else:
            split = ""
        rows.append(ManifestRow(
            name=piece.name, source=res.source, start_s=piece.start_s, end_s=piece.end_s,
            duration_s=piece.duration_s, speaker_id=speaker_id, f0_median_hz=st.median_hz, f0_min_hz=st.min_hz,
            f0_max_hz=st.max_hz, voiced_ratio=st.voiced_ratio, status=status, split=split, problem=problem))
    return rows


def _too_little_audio(found: float, needed: float, n_files: int, results: list[FileResult]) -> RVCLoraError:
    bad = [f"{r.source}: {p}" for r in results for p, a in r.problems if a == "file skipped"]
    msg = (f"only {found:.1f} s of usable audio found in {n_files} file(s) (need at least {needed:g} s, "
           f"data.min_total_seconds); add more recordings or lower data.min_total_seconds")
    if bad:
        msg += ". Files not used: " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
    return RVCLoraError(msg)


def _stored_feature_dim(layout: ExperimentLayout, names: list[str]) -> int:
    """Width of the features already on disk (RVC's 256 / 768 when there are none)."""
    import numpy as np

    for name in names:
        path = layout.feature(name)
        if path.is_file():
            try:
                return int(np.load(path, mmap_mode="r").shape[-1])
            except (OSError, ValueError):
                continue
    return FEATURE_DIMS[layout.version]


def _check_settings(cfg: DictConfig, use_f0: bool, method: str, pitch_device: str, rmvpe_path) -> str:
    """Check every setting that is cheap to check before any work; report all problems at once.

    Returns the content model path. A lone missing content model raises ``ContentModelMissing``.
    """
    from rvc_lora.features.content import ContentModelMissing

    problems: list[str] = []
    content_error: ContentModelMissing | None = None
    input_dir = cfg.data.input_dir
    if input_dir is None:
        problems.append("data.input_dir is not set: give the folder of recordings (data.input_dir=...)")
    elif not Path(input_dir).expanduser().is_dir():
        problems.append(f"data.input_dir {input_dir}: folder not found")
    content_path = ""
    try:
        content_path = check_content_path(cfg.content.path)
    except ContentModelMissing as exc:
        content_error = exc
        problems.append(str(exc))
    if use_f0:
        from rvc_lora.features.pitch import get_pitch_extractor

        try:
            get_pitch_extractor(method, device=pitch_device, rmvpe_path=rmvpe_path)  # validates paths early
        except (RVCLoraError, ValueError) as exc:
            problems.append(str(exc))
    if content_error is not None and len(problems) == 1:
        raise content_error
    if problems:
        raise RVCLoraError("cannot prepare:\n  - " + "\n  - ".join(problems))
    return content_path


def run_prepare(cfg: DictConfig) -> PrepareReport:
    """Prepare ``cfg.data.experiment_dir`` from the recordings in ``cfg.data.input_dir`` (module docstring).

    Returns the :class:`PrepareReport` (on rank 0 the merged one). Raises ``ContentModelMissing`` when no
    content model is available and ``RVCLoraError`` for unusable input (no files, too little audio).
    """
    shard = sharding.join(cfg.data.shard_timeout_s)
    try:
        return _prepare(cfg, shard)
    except BaseException as err:
        if shard.world_size > 1:  # let the other ranks stop instead of waiting for this one
            message = str(err) if isinstance(err, RVCLoraError) else f"{type(err).__name__}: {err}"
            with contextlib.suppress(RVCLoraError):  # their errors are theirs to report
                shard.fail_remaining(message)
        raise
    finally:
        sharding.leave(shard)


def _prepare(cfg: DictConfig, shard: sharding.Shard) -> PrepareReport:
    version = str(cfg.model.version)  # an RVCVersion: v1 or v2
    use_f0 = cfg.model.f0
    method = resolve_pitch_method(cfg) if use_f0 else ""
    rmvpe_path = cfg.pitch.rmvpe_path
    pitch_device = default_device(cfg.pitch.device)
    content_path = _check_settings(cfg, use_f0, method, pitch_device, rmvpe_path)
    exp_dir = Path(cfg.data.experiment_dir).expanduser()
    settings = ingest_settings(cfg)
    files = find_audio_files(cfg.data.input_dir, list(cfg.data.extensions), exclude=[exp_dir])
    input_root = Path(cfg.data.input_dir).expanduser()
    speaker_id = cfg.data.speaker_id
    num_workers = cfg.data.num_workers
    show = cfg.data.progress and shard.is_main
    exp_name = cfg.data.name

    layout = ExperimentLayout(exp_dir, version)
    layout.make_dirs()
    state_dir = exp_dir / STATE_DIR
    (state_dir / "files").mkdir(parents=True, exist_ok=True)
    started = time.time()
    _clean_stray_temps(layout, older_than=started if shard.world_size == 1 else started - 30.0)
    rels = [p.relative_to(input_root).as_posix() for p in files]
    state = _read_state(state_dir / "state.json")
    pitch_fp = fingerprint(method, rmvpe_path) if use_f0 else ""
    content_fp = fingerprint(content_path, version)

    report = PrepareReport(experiment_dir=exp_dir, pitch_method=method, rank=shard.rank,
                           world_size=shard.world_size)
    executor = None
    try:
        # 1. ingest -----------------------------------------------------------------------------------
        t0 = time.perf_counter()
        tasks = [IngestTask(i, str(p), r, str(exp_dir), settings)
                 for i, (p, r) in enumerate(zip(files, rels, strict=True)) if shard.owns(i)]
        cached = {t.file_index: cached_result(t) for t in tasks}
        todo_tasks = [t for t in tasks if cached[t.file_index] is None]
        todo_bytes = sum(Path(t.path).stat().st_size for t in todo_tasks)
        parallel = len(todo_tasks) > 1 and todo_bytes >= POOL_MIN_BYTES
        executor = _executor(num_workers) if parallel else None
        results_iter = executor.map(ingest_file, todo_tasks) if executor else map(ingest_file, todo_tasks)
        fresh = {r.file_index: r for r in _progress(show, "ingest", "file")(results_iter, len(todo_tasks))}
        results: list[FileResult] = [cached[t.file_index] or fresh[t.file_index] for t in tasks]
        report.timings["ingest"] = time.perf_counter() - t0
        report.counts["decoded"] = sum(r.decoded for r in results)
        report.counts["pieces_written"] = sum(r.written for r in results)
        local_seconds = count_seconds(results)
        total_seconds = sum(p["seconds"] for p in shard.exchange("ingest", {"seconds": local_seconds}))
        needed = cfg.data.min_total_seconds
        if total_seconds < needed:
            raise _too_little_audio(total_seconds, needed, len(files), results)

        ok_names = [p.name for r in results for p in r.ok_pieces]
        # 2. pitch --------------------------------------------------------------------------------------
        stats: dict[str, F0Stats] = {}
        errors: dict[str, str] = {}
        if use_f0:
            t0 = time.perf_counter()
            force = state.get("pitch") not in (None, pitch_fp)
            def pool() -> Executor | None:
                nonlocal executor
                if executor is None:
                    executor = _executor(num_workers)
                return executor

            stats, perr, n = pitch_stage(layout, ok_names, method, rmvpe_path, pitch_device, pool, force,
                                         _progress(show, "pitch", "piece"))
            errors.update(perr)
            report.counts["pitch_computed"] = n
            report.timings["pitch"] = time.perf_counter() - t0
        if executor is not None:
            executor.shutdown()
            executor = None
        # 3. content ------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        force = state.get("content") not in (None, content_fp)
        todo = [n for n in ok_names if n not in errors]
        if shard.is_main:  # RVC's silence piece: its features come from this content encoder too
            write_mute_piece(layout, settings.sample_rate, use_f0)
            todo.append(MUTE_NAME)
        needs_model = force or any(not layout.feature(n).is_file() for n in todo)
        n = 0
        feature_dim = _stored_feature_dim(layout, todo)
        if needs_model:
            from rvc_lora.features.content import load_content_model

            t_load = time.perf_counter()
            encoder = load_content_model(content_path, kind=str(cfg.content.kind),
                                         device=default_device(cfg.content.device), half=cfg.content.half)
            report.timings["content_model_load"] = time.perf_counter() - t_load
            cerr, n = content_stage(layout, todo, encoder, cfg.content.batch_size, force,
                                    _progress(show, "content", "piece"))
            errors.update(cerr)
            feature_dim = encoder.feature_dim(version)
            del encoder
        report.counts["content_computed"] = n
        report.timings["content"] = time.perf_counter() - t0
    except BaseException:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        raise

    # local rows and problems
    rows: list[ManifestRow] = []
    problems: list[tuple[str, str, str]] = []
    for res in results:
        warnings = "; ".join(p for p, a in res.problems if a != "file skipped" and a != "pieces skipped")
        rows += _file_rows(res, speaker_id, stats, errors, warnings)
        problems += [(res.source, p, a) for p, a in res.problems]
        failed = [p.name for p in res.ok_pieces if p.name in errors]
        if failed:
            problems.append((res.source, f"{len(failed)} piece(s): {errors[failed[0]]}", "pieces skipped"))
    report.files = len(files)
    report.total_seconds = total_seconds
    if shard.world_size > 1:
        parts = shard.exchange("result", {"rows": rows, "problems": problems})
        if not shard.is_main:
            report.rows, report.problems = rows, problems
            return report
        rows = [row for part in parts for row in part["rows"]]
        problems = [problem for part in parts for problem in part["problems"]]
    rows.sort(key=lambda r: _piece_key(r.name))
    order = {r: i for i, r in enumerate(rels)}
    problems.sort(key=lambda p: (order.get(p[0], len(rels)), p[1]))

    # 4. finish (rank 0) ----------------------------------------------------------------------------------
    ok_rows = [r for r in rows if r.status == "ok"]
    val = choose_validation([r.name for r in ok_rows], cfg.data.validation_pieces)
    for r in ok_rows:
        r.split = "val" if r.name in val else "train"
    train_names = [r.name for r in ok_rows if r.split == "train"]
    mute_ok = MUTE_NAME not in errors and layout.feature(MUTE_NAME).is_file()
    if mute_ok:
        rows.append(mute_row(speaker_id))
    else:
        problems.append(("(silence piece)", errors.get(MUTE_NAME, "no content features"), "not added"))
    write_manifest(layout.manifest_path, rows)
    write_filelist(layout, train_names + [MUTE_NAME] * (MUTE_COPIES if mute_ok else 0), f0=use_f0,
                   speaker_id=speaker_id)
    if cfg.data.build_index and train_names:
        t0 = time.perf_counter()
        report.index_path, built = index_stage(
            layout, train_names, exp_name, fingerprint(train_names, content_fp),
            force=state.get("content") not in (None, content_fp), progress=_progress(show, "index", "piece"))
        report.counts["index_built"] = int(built)
        report.timings["index"] = time.perf_counter() - t0
    info = ExperimentInfo(
        name=exp_name, version=version, sample_rate=settings.sample_rate, f0=use_f0,
        feature_dim=feature_dim, pitch_method=method, content_model=content_path,
        speaker_id=speaker_id,
        extra={"input_dir": str(input_root.resolve()), "files": len(files), "pieces": len(ok_rows),
               "train_pieces": len(train_names), "val_pieces": len(val), "silence_piece": mute_ok,
               "total_seconds": round(total_seconds, 2),
               "index": report.index_path.name if report.index_path else None,
               "slicing": asdict(settings)},
    )
    write_info(layout, info)
    with atomic_write(state_dir / "state.json") as tmp:
        tmp.write_text(json.dumps({"pitch": pitch_fp or state.get("pitch"), "content": content_fp}))
    report.rows, report.problems = rows, problems
    return report
