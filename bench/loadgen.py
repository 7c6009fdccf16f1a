"""Load generators for `POST /v1/swaps`: Debian's `wrk` (C, epoll; `make bench-tools` installs it) driven by
`bench/wrk_submit.lua`, or, when it is missing, an asyncio httpx client in this process (which costs more CPU per
request than the API itself on a 2-core box, so its figures measure contention more than the API).

Both run closed loop (each connection sends its next request when the last is answered) or open loop at a fixed
rate (sends at fixed times whatever the latency; a send more than 5 ms behind its time is counted as late). Both
report the generator's own CPU time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_submit.lua"
INSTALL_HINT = "`make bench-tools` (apt-get install wrk)"


def wrk_path() -> str | None:
    return shutil.which("wrk")


@dataclass
class Submits:
    """What a generator needs to send: the multipart body (encoded once), its boundary and the API keys."""

    body: bytes
    boundary: str
    keys: list[str]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    base: str, submits: Submits, *, seconds: float, connections: int, rate: float = 0, generator: str = "wrk"
) -> dict:
    """One run; `rate` > 0: open loop at that many requests per second. Returns requests, per_second, codes,
    latency percentiles (ms) and sent_late_over_5ms."""
    if generator == "wrk":
        return _run_wrk(base, submits, seconds=seconds, connections=connections, rate=rate)
    return _run_httpx(base, submits, seconds=seconds, connections=connections, rate=rate)


def _run_wrk(base: str, submits: Submits, *, seconds: float, connections: int, rate: float) -> dict:
    exe = wrk_path()
    if exe is None:
        raise RuntimeError(f"wrk is not installed: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="fm-wrk-") as tmp:
        body, keys = Path(tmp) / "body", Path(tmp) / "keys"
        body.write_bytes(submits.body)
        keys.write_text("\n".join(submits.keys) + "\n")
        env = {
            **os.environ,
            "WRK_BODY": str(body),
            "WRK_BOUNDARY": submits.boundary,
            "WRK_KEYS": str(keys),
            "WRK_RUN": os.urandom(6).hex(),
            "WRK_RATE": str(rate),
        }
        command = [exe, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
        command += ["-s", str(WRK_SCRIPT), f"{base}/v1/swaps"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    result_line = next(line for line in stdout.decode().splitlines() if line.startswith("{"))
    result = json.loads(result_line)
    result["per_second"] = round(result["requests"] / result["duration_s"], 1)
    result["codes"] = {int(k): v for k, v in result["codes"].items()}
    return result


def run_measured(
    base: str, submits: Submits, *, seconds: float, connections: int, rate: float = 0, generator: str = "wrk"
) -> dict:
    """`run`, plus the generator's CPU seconds (`generator_cpu_s`): for wrk the reaped child's, for httpx this
    process's."""
    if generator == "wrk":
        before = os.times()
        result = run(base, submits, seconds=seconds, connections=connections, rate=rate, generator=generator)
        after = os.times()
        result["generator_cpu_s"] = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )
        return result
    before_self = time.process_time()
    result = run(base, submits, seconds=seconds, connections=connections, rate=rate, generator=generator)
    result["generator_cpu_s"] = time.process_time() - before_self
    return result


# --- the fallback: httpx on asyncio, in this process --------------------------------------------------------------


def _run_httpx(base: str, submits: Submits, *, seconds: float, connections: int, rate: float) -> dict:
    return asyncio.run(_httpx_main(base, submits, seconds=seconds, connections=connections, rate=rate))


async def _httpx_main(base: str, submits: Submits, *, seconds: float, connections: int, rate: float) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    content_type = f"multipart/form-data; boundary={submits.boundary}"
    run_id = os.urandom(6).hex()
    counter = iter(range(10**9))
    late = 0

    async def one(client: httpx.AsyncClient) -> None:
        n = next(counter)
        started = time.perf_counter()
        response = await client.post(
            "/v1/swaps",
            headers={
                "Authorization": f"Bearer {submits.keys[n % len(submits.keys)]}",
                "Idempotency-Key": f"{run_id}-{n}",
                "Content-Type": content_type,
            },
            content=submits.body,
        )
        latencies.append((time.perf_counter() - started) * 1000)
        codes[response.status_code] = codes.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30, trust_env=False) as client:
        started = time.perf_counter()
        if rate > 0:
            tasks = []
            for n in range(int(rate * seconds)):
                wait = started + n / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.005:
                    late += 1
                tasks.append(asyncio.create_task(one(client)))
            await asyncio.gather(*tasks)
        else:
            stop = started + seconds

            async def loop() -> None:
                while time.perf_counter() < stop:
                    await one(client)

            await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "duration_s": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1),
        "codes": codes,
        "sent_late_over_5ms": late,
        "p50_ms": round(pct(latencies, 0.5), 2),
        "p90_ms": round(pct(latencies, 0.9), 2),
        "p99_ms": round(pct(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2) if latencies else float("nan"),
    }
