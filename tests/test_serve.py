"""The HTTP / WebSocket server, talked to over real sockets: a uvicorn server on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from rvc_lora.checkpoint import load_rvc, save_rvc  # noqa: E402
from rvc_lora.infer import Converter, ConvertOptions  # noqa: E402
from rvc_lora.infer.command import main as convert_main  # noqa: E402
from rvc_lora.infer.streaming import StreamingConverter, StreamSettings  # noqa: E402
from rvc_lora.serve.app import create_app  # noqa: E402
from rvc_lora.serve.service import ServeLimits, load_service  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from audio_fixtures import tone_with_noise_burst  # noqa: E402
from serve_helpers import read_audio_bytes, running_server, wav_bytes  # noqa: E402
from train_helpers import make_adapter  # noqa: E402

SR = 16000
TOKEN = "test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def files(tmp_path_factory, fixture_model_path, tiny_hubert_v2):
    root = tmp_path_factory.mktemp("serve")
    hubert = tiny_hubert_v2
    registry = root / "adapters"
    registry.mkdir()
    for name, seed in (("alice", 1), ("bob", 2), ("carol", 3)):
        make_adapter(fixture_model_path, registry / f"{name}.safetensors", seed)
    other_base = root / "other_base.pth"  # the fixture model with shifted generator weights
    ckpt = load_rvc(fixture_model_path)
    with torch.no_grad():
        for param in ckpt.model.dec.parameters():
            param.add_(0.01)
    save_rvc(ckpt.model, other_base, version=ckpt.version, f0=ckpt.f0, sample_rate=ckpt.sample_rate)
    make_adapter(other_base, registry / "foreign.safetensors", 4)
    make_adapter(other_base, root / "foreign_upload.safetensors", 5)
    make_adapter(fixture_model_path, root / "dave.safetensors", 6)
    return {"root": root, "model": fixture_model_path, "hubert": hubert, "registry": registry}


@pytest.fixture(scope="module")
def service(files):
    def factory() -> Converter:
        return Converter(files["model"], files["hubert"], device="cpu", f0_method="pm")

    svc = load_service(factory, files["registry"], workers=1, queue_size=8)
    yield svc
    svc.stop()


LIMITS = ServeLimits(max_upload_bytes=2_000_000, max_audio_seconds=5.0, max_adapter_bytes=1_000_000, timeout=120.0,
                     allow_upload=True)


@pytest.fixture(scope="module")
def server(service):
    app = create_app(service.engine, service.registry, service.model, LIMITS, token=TOKEN)
    with running_server(app) as url:
        yield url


def convert(url: str, audio_bytes: bytes | None, options: dict | str | None = None, headers=AUTH,
            filename: str = "in.wav") -> httpx.Response:
    files = {"audio": (filename, audio_bytes, "audio/wav")} if audio_bytes is not None else None
    data = {}
    if options is not None:
        data["options"] = options if isinstance(options, str) else json.dumps(options)
    return httpx.post(f"{url}/v1/convert", files=files, data=data, headers=headers, timeout=120)


def test_convert_over_http_equals_the_cli_output(server, files, tmp_path):
    audio = tone_with_noise_burst(1.0)
    source = tmp_path / "in.wav"
    source.write_bytes(wav_bytes(audio, SR))
    options = {"pitch": 3, "f0_method": "pm", "rms_mix": 0.5, "protect": 0.3, "seed": 0,
               "adapters": [{"name": "alice", "strength": 0.7}, {"name": "bob", "strength": 0.3}]}
    response = convert(server, source.read_bytes(), options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    served, sr = read_audio_bytes(response.content)

    out = tmp_path / "cli.wav"
    registry = files["registry"]
    code = convert_main([str(source), "--model", str(files["model"]), "--hubert", str(files["hubert"]),
                         "--adapter", f"{registry / 'alice.safetensors'}:0.7",
                         "--adapter", f"{registry / 'bob.safetensors'}:0.3", "--pitch", "3", "--f0-method", "pm",
                         "--rms-mix", "0.5", "--protect", "0.3", "--seed", "0", "--device", "cpu", "--out", str(out)])
    assert code == 0
    cli, cli_sr = read_audio_bytes(out.read_bytes())
    assert sr == cli_sr == 40000
    assert np.array_equal(served, cli)  # same process, same threads: bit-exact

    flac = convert(server, source.read_bytes(), {**options, "format": "flac"})
    assert flac.status_code == 200 and flac.headers["content-type"] == "audio/flac"
    decoded, _ = read_audio_bytes(flac.content)
    assert np.max(np.abs(decoded - cli)) < 2.0 ** -22  # 24-bit FLAC


def test_simultaneous_requests_with_different_adapters_do_not_cross_talk(server):
    audio = wav_bytes(tone_with_noise_burst(0.8, seed=1), SR)
    configs = [
        [{"name": "alice", "strength": 1.0}],
        [{"name": "bob", "strength": 1.0}],
        [{"name": "alice", "strength": 0.5}, {"name": "carol", "strength": 1.0}],
        [],
    ]

    def run(adapters):
        response = convert(server, audio, {"seed": 0, "adapters": adapters})
        assert response.status_code == 200, response.text
        return read_audio_bytes(response.content)[0]

    sequential = [run(c) for c in configs]
    for i in range(len(configs)):
        for j in range(i):
            assert not np.array_equal(sequential[i], sequential[j])  # the adapters do change the output
    order = [0, 1, 2, 3, 2, 1, 0, 3]
    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        results = list(pool.map(lambda k: run(configs[k]), order))
    for k, result in zip(order, results, strict=True):
        assert np.array_equal(result, sequential[k])
    metrics = httpx.get(f"{server}/metrics", headers=AUTH).text
    assert "rvc_lora_adapter_swaps_total" in metrics


BAD_REQUESTS = {
    "missing file": (lambda url: convert(url, None, {}), 400, "audio"),
    "corrupt audio": (lambda url: convert(url, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" * 10, {}), 400, "audio"),
    "unknown adapter": (lambda url: convert(url, _ok_audio(), {"adapters": [{"name": "zed"}]}), 422,
                        "options.adapters[0].name"),
    "NaN strength": (lambda url: convert(url, _ok_audio(), '{"adapters": [{"name": "alice", "strength": NaN}]}'),
                     422, "options.adapters[0].strength"),
    "huge strength": (lambda url: convert(url, _ok_audio(), {"adapters": [{"name": "alice", "strength": 1e6}]}),
                      422, "options.adapters[0].strength"),
    "path-like adapter name": (lambda url: convert(url, _ok_audio(), {"adapters": [{"name": "../alice"}]}), 422,
                               "options.adapters[0].name"),
    "absolute path adapter name": (lambda url: convert(url, _ok_audio(),
                                                       {"adapters": [{"name": "/etc/passwd"}]}), 422,
                                   "options.adapters[0].name"),
    "oversized upload": (lambda url: convert(url, b"\0" * 2_100_000, {}), 413, None),
    "wrong token": (lambda url: convert(url, _ok_audio(), {}, headers={"Authorization": "Bearer nope"}), 401,
                    "authorization"),
    "no token": (lambda url: httpx.get(f"{url}/v1/adapters"), 401, "authorization"),
    "malformed JSON": (lambda url: convert(url, _ok_audio(), '{"pitch": 3,'), 400, "options"),
    "options not an object": (lambda url: convert(url, _ok_audio(), "[1, 2]"), 400, "options"),
    "too long audio": (lambda url: convert(url, wav_bytes(np.zeros(8000 * 6, np.float32), 8000, "PCM_16"), {}), 413,
                       "audio"),
    "pitch of the wrong type": (lambda url: convert(url, _ok_audio(), {"pitch": "high"}), 400, "options.pitch"),
    "seed of the wrong type": (lambda url: convert(url, _ok_audio(), {"seed": 1.5}), 400, "options.seed"),
    "pitch out of range": (lambda url: convert(url, _ok_audio(), {"pitch": 99}), 422, "options.pitch"),
    "unknown option": (lambda url: convert(url, _ok_audio(), {"speed": 2}), 400, "options.speed"),
    "unsupported format": (lambda url: convert(url, _ok_audio(), {"format": "mp3"}), 422, "options.format"),
    "unknown pitch method": (lambda url: convert(url, _ok_audio(), {"f0_method": "rmvpe"}), 422, "options.f0_method"),
    "speaker out of range": (lambda url: convert(url, _ok_audio(), {"speaker_id": 99}), 422, "options.speaker_id"),
    "silent audio": (lambda url: convert(url, wav_bytes(np.zeros(SR, np.float32), SR), {}), 422, "audio"),
    "not multipart": (lambda url: httpx.post(f"{url}/v1/convert", json={"pitch": 1}, headers=AUTH), 400, "audio"),
    "adapter listed twice": (lambda url: convert(url, _ok_audio(), {"adapters": [{"name": "bob"}, {"name": "bob"}]}),
                             422, "options.adapters[1]"),
    "adapter for another base": (lambda url: convert(url, _ok_audio(), {"adapters": [{"name": "foreign"}]}), 422,
                                 "options.adapters"),
    "upload that is not safetensors": (lambda url: _upload(url, "mallory", b"\x80\x04\x95 pickle payload"), 415,
                                       "file"),
    "upload with a path-like name": (lambda url: _upload(url, "../mallory", b"x" * 20), 422, "name"),
    "upload for another base": (lambda url: _upload(url, "eve", None), 422, "file"),
    "unknown route": (lambda url: httpx.get(f"{url}/v1/nothing", headers=AUTH), 404, None),
}


def _ok_audio() -> bytes:
    return wav_bytes(tone_with_noise_burst(0.5, seed=2), SR)


FOREIGN: dict[str, bytes] = {}


def _upload(url: str, name: str, data: bytes | None) -> httpx.Response:
    data = FOREIGN["bytes"] if data is None else data
    return httpx.post(f"{url}/v1/adapters", data={"name": name}, files={"file": ("a.safetensors", data)},
                      headers=AUTH, timeout=60)


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_4xx_naming_the_field_and_the_server_keeps_serving(server, files, case):
    FOREIGN["bytes"] = (files["root"] / "foreign_upload.safetensors").read_bytes()
    send, status, field = BAD_REQUESTS[case]
    response = send(server)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if field is not None:
        assert error["field"] == field, error
    assert str(files["root"]) not in response.text  # no server paths in error messages
    health = httpx.get(f"{server}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_nothing_is_stored_by_refused_uploads_and_a_good_upload_is_usable(server, files):
    registry = files["registry"]
    assert not any(p.name.startswith(("mallory", "eve", ".upload")) for p in registry.iterdir())
    data = (files["root"] / "dave.safetensors").read_bytes()
    created = _upload(server, "dave", data)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "dave" and created.json()["base_match"] is True
    again = _upload(server, "dave", data)
    assert again.status_code == 409 and again.json()["error"]["field"] == "name"
    response = convert(server, _ok_audio(), {"adapters": [{"name": "dave", "strength": 0.5}]})
    assert response.status_code == 200, response.text


def test_listing_models_health_and_metrics(server, files):
    adapters = httpx.get(f"{server}/v1/adapters", headers=AUTH).json()["adapters"]
    by_name = {a["name"]: a for a in adapters}
    assert {"alice", "bob", "carol", "foreign"} <= set(by_name)
    assert by_name["alice"]["rank"] == 4 and by_name["alice"]["algorithm"] == "lora"
    assert by_name["alice"]["base_match"] is True and by_name["foreign"]["base_match"] is False
    assert by_name["alice"]["size"] == (files["registry"] / "alice.safetensors").stat().st_size
    model = httpx.get(f"{server}/v1/models", headers=AUTH).json()
    assert model["sample_rate"] == 40000 and model["f0"] is True and model["version"] == "v2"
    assert "rmvpe" not in model["f0_methods"] and "pm" in model["f0_methods"]
    metrics = httpx.get(f"{server}/metrics", headers=AUTH)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("rvc_lora_requests_total", "rvc_lora_errors_total", "rvc_lora_request_seconds_bucket",
                 "rvc_lora_audio_seconds_total", "rvc_lora_real_time_factor_bucket", "rvc_lora_adapter_cache_hits",
                 "rvc_lora_queue_depth"):
        assert name in metrics.text
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers


def test_full_queue_gets_429_and_a_timed_out_request_503(files):
    def factory() -> Converter:
        return Converter(files["model"], files["hubert"], device="cpu", f0_method="pm")

    svc = load_service(factory, files["registry"], workers=1, queue_size=1)
    release = threading.Event()
    impatient = create_app(svc.engine, svc.registry, svc.model, ServeLimits(timeout=1.0))
    patient = create_app(svc.engine, svc.registry, svc.model, ServeLimits(timeout=120.0))
    try:
        with running_server(impatient) as url, running_server(patient) as patient_url:
            svc.engine.submit(lambda worker: release.wait(30))  # occupies the only worker
            with ThreadPoolExecutor(max_workers=1) as pool:
                queued = pool.submit(convert, url, _ok_audio(), {}, {})
                deadline = time.monotonic() + 20
                while svc.engine.depth < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                rejected = convert(url, _ok_audio(), {}, headers={})
                assert rejected.status_code == 429 and rejected.headers["retry-after"]
                assert rejected.json()["error"]["message"].startswith("server busy")
                timed_out = queued.result()
            assert timed_out.status_code == 503, timed_out.text
            assert "timed out" in timed_out.json()["error"]["message"]
            release.set()
            ok = convert(patient_url, _ok_audio(), {}, headers={})  # same engine: still serving
            assert ok.status_code == 200, ok.text
    finally:
        release.set()
        svc.stop()


def test_stream_over_websocket_equals_the_python_streaming_converter(server, files):
    audio = tone_with_noise_burst(1.2, seed=3)
    options = {"seed": 0, "f0_method": "pm", "adapters": [{"name": "carol", "strength": 0.8}]}
    stream_settings = {"block": 0.2, "crossfade": 0.04, "context": 0.6}

    async def session() -> tuple[np.ndarray, dict, dict]:
        ws_url = server.replace("http://", "ws://") + "/v1/stream"
        async with websockets.connect(ws_url) as ws:
            await ws.send(json.dumps({"token": TOKEN, "sample_rate": SR, "options": options,
                                      "stream": stream_settings}))
            ready = json.loads(await ws.recv())
            pieces = []
            for i in range(0, audio.shape[0], 1000):  # chunks that do not align with blocks
                await ws.send(audio[i:i + 1000].astype("<f4").tobytes())
                pieces.append(np.frombuffer(await ws.recv(), dtype="<f4"))
            await ws.send(json.dumps({"type": "end"}))
            pieces.append(np.frombuffer(await ws.recv(), dtype="<f4"))
            done = json.loads(await ws.recv())
        return np.concatenate(pieces), ready, done

    streamed, ready, done = asyncio.run(session())
    assert ready["type"] == "ready" and ready["output_rate"] == 40000 and ready["latency"] == pytest.approx(0.24)
    local = Converter(files["model"], files["hubert"], [(files["registry"] / "carol.safetensors", 0.8)],
                      device="cpu", f0_method="pm")
    reference = StreamingConverter(local, ConvertOptions(seed=0), StreamSettings(**stream_settings))
    expected = np.concatenate([reference.process(audio), reference.flush()])
    assert done["type"] == "done" and done["blocks"] == len(reference.stats.block_seconds)
    assert np.array_equal(streamed, expected)


@pytest.mark.parametrize("first, field", [
    ({"sample_rate": 16000, "stream": {"block": -1}}, "stream"),
    ({"sample_rate": "fast"}, "sample_rate"),
    ({"sample_rate": 16000, "options": {"adapters": [{"name": "../x"}]}}, "options.adapters[0].name"),
    ({"token": "wrong", "sample_rate": 16000}, "token"),
])
def test_bad_stream_setup_gets_an_error_message_and_a_close(server, first, field):
    async def session():
        async with websockets.connect(server.replace("http://", "ws://") + "/v1/stream") as ws:
            await ws.send(json.dumps({"token": TOKEN, **first}))
            message = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return message, closed.value.rcvd.code

    message, code = asyncio.run(session())
    assert message["type"] == "error" and message["error"]["field"] == field
    assert code == 1008
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch, capsys):
    import builtins

    from rvc_lora.cli import main

    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name.split(".")[0] == "fastapi":
            raise ImportError("No module named 'fastapi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    code = main(["serve", "--model", "m.pth", "--adapters", "."])
    assert code == 2
    assert "pip install 'rvc-lora[serve]'" in capsys.readouterr().err


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_serve_threads_below_one_is_a_one_line_error(capsys, threads):
    from rvc_lora.cli import main

    assert main(["serve", "--model", "m.pth", "--adapters", ".", "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert f"--threads must be at least 1, got {threads}" in err and "Traceback" not in err


def test_web_page_in_headless_chromium_uploads_converts_and_plays(server, tmp_path):
    from chromium_driver import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    voice = tmp_path / "voice.wav"
    voice.write_bytes(wav_bytes(tone_with_noise_burst(1.0, seed=4), SR))
    with Chromium(binary) as page:
        page.navigate(f"{server}/")
        page.wait_for("!document.getElementById('token-box').hidden")  # the API asked for the token
        page.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}; "
                      "document.getElementById('token-save').click()")
        page.wait_for("document.querySelectorAll('input[data-adapter]').length >= 3")
        page.set_files("#audio-file", voice)
        page.wait_for("!document.getElementById('convert').disabled")
        page.evaluate("const s = document.querySelector('input[data-adapter=\"alice\"]'); s.value = '0.8'; "
                      "s.dispatchEvent(new Event('input')); document.getElementById('pitch').value = '5'; "
                      "document.getElementById('convert').click()")
        page.wait_for("!document.getElementById('result').hidden || "
                      "document.getElementById('status').className === 'error'", timeout=120)
        status = page.evaluate("document.getElementById('status').textContent")
        assert status.startswith("done"), status
        played = page.evaluate("""(async () => {
            const a = document.getElementById('result-audio');
            if (a.readyState < 1) await new Promise((ok, bad) => {
                a.onloadedmetadata = ok; a.onerror = () => bad(new Error('media error ' + a.error.code)); });
            const data = await (await fetch(a.src)).arrayBuffer();
            const audio = await new OfflineAudioContext(1, 1, 40000).decodeAudioData(data);
            const samples = audio.getChannelData(0);
            return {duration: a.duration, error: a.error ? a.error.code : null, length: audio.length,
                    rate: audio.sampleRate, peak: samples.reduce((m, x) => Math.max(m, Math.abs(x)), 0),
                    download: document.getElementById('download').download};
        })()""")
    assert played["error"] is None and played["duration"] == pytest.approx(1.0, abs=0.02)
    assert played["rate"] == 40000 and played["length"] == pytest.approx(40000, abs=400)
    assert played["peak"] > 1e-3 and played["download"] == "voice-converted.wav"


def test_library_errors_are_the_clients_4xx_but_the_servers_storage_failures_503_without_paths():
    import errno

    from rvc_lora.serve.errors import library_error
    from rvc_lora.utils import RVCLoraError, StorageError

    bad_input = library_error(RVCLoraError("/srv/tmp/upload.wav: not an audio file"), 400, "audio",
                              ("/srv/tmp/upload.wav", "voice.wav"))
    assert (bad_input.status, bad_input.field, bad_input.message) == (400, "audio", "voice.wav: not an audio file")
    for exc in (OSError(errno.ENOSPC, "No space left on device", "/srv/tmp/upload.wav"),
                StorageError.from_os_error(PermissionError(errno.EACCES, "Permission denied", "/srv/a.safetensors"))):
        refused = library_error(exc, 422, "options.adapters")
        assert refused.status == 503 and refused.field is None and "/srv" not in refused.message
