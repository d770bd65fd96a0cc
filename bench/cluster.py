"""Benchmark: cross-shard handoff against raw ZeroMQ + msgpack, and scaling to two shards.

``python -m bench.cluster [--quick]`` runs, in one invocation:

1. **Handoff throughput** (durability ``fsync``): a router and two real shards run
   ``bench.cluster_nets:relay``; the benchmark puts bursts at shard 0, whose one
   transition turns each into ``BURST_TOKENS`` parcels owned by shard 1, so every
   parcel is handed off. The figure is parcels / (time from the first put to shard 1
   answering a count query with all of them): a count is answered after the commit
   that applied them, so tokens count when the receiver commits them.
2. **Handoff latency** on the same cluster under light load (small bursts, spaced):
   shard 1 measures each received token from its production (the token's time, the
   sender's firing, same host clock) to the commit that applied it; p50 and p99.
3. **Handoff consumed** (durability ``fsync``): the same, on ``bench.cluster_nets:
   relay_consumed``, in which shard 1's transition ``absorb`` consumes every parcel
   that arrives: a handed-off token counts only once it is in the receiver's marking,
   indexed, has enabled ``absorb`` and its firing is committed (shard 1's committed
   firings of ``absorb``). Its baseline is the receiving engine alone, in this process:
   an :class:`~nets.engine.Engine` of the same net gets the same parcels put locally
   (``Engine.add``, checked, as a put adds them) and fires ``absorb`` until nothing is
   enabled. ``consume_ratio`` is the cluster's rate over the engine's, both measured
   in this invocation.
4. **Raw ceiling**: the same number of tokens, in messages of the size the handoff run
   actually sent (its mean tokens per message), as ``Handoff`` frames from a DEALER in
   this process to a ROUTER in a child process that decodes each frame and every run
   in it (``router.wire.decode`` + msgpack) and acknowledges it; the sender keeps a
   window of messages in flight. No engine, no LMDB: the transport and codec alone.
5. **Scaling**: the scraper decision workload with every delay 0 (100,000 targets, or
   20,000 with ``--quick``) on a cluster of one shard and on one of two (a router in
   both; durability ``process``). The shards start without targets
   or proxies (``bench.shard_nets:scraper_zero_delay_empty``); once every shard
   serves, the benchmark puts the targets through the cluster client (each goes to
   the shard that owns its domain; nothing fires without a proxy), then the proxies
   (dealt round robin), so all shards start together. Firings per second from the
   proxies' put to the commit of the last batch that fired, which each shard's
   statistics date (``firings_committed_ms``, wall clock), as read in the first
   statistics showing every target finished: timed to that reply instead, a quick run
   (about 0.3 s on one shard) read the statistics' round trip, which waits for the
   running batch, more than the shards (``bench.shard`` times its runs the same way).
   This machine has 2 cores: the two shards, the router and the benchmark share them.

Every process runs on 127.0.0.1 in a temporary directory and is stopped by its pid.
The last line is one JSON object with the keys ``handoff_tokens_per_s``,
``raw_ceiling_per_s``, ``handoff_ratio``, ``handoff_p50_ms``, ``handoff_p99_ms``,
``one_shard_per_s``, ``two_shards_per_s``, ``scaling``, ``consumed_tokens_per_s``,
``local_consume_per_s``, ``consume_ratio``, and the CPU the receiving shard spent per
token (``handoff_receiver_us_per_token``, ``consumed_receiver_us_per_token``; from
/proc, ``null`` without it) with the engine's alone (``local_consume_us_per_token``):
on a shared 2-core machine they are steadier than the rates. ``scaling_to_reply`` is the
scaling timed to the statistics reply, as it was before the commit's time was read. The
scaling runs go in ``SCALING_ROUNDS`` (3) rounds of one shard then two; ``scaling`` and
both rates are medians over the rounds (``scaling_rounds``: each round's ratio). The
consuming run and its baseline go in ``CONSUME_ROUNDS`` (3) rounds likewise
(``consume_rounds``), their figures medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import msgpack
import zmq

from bench.cluster_nets import burst, parcels, relay_consumed
from bench.shard_nets import PROXIES, zero_delay_params
from cluster.client import ClusterClient, ShardClient
from cluster.processes import ShardProcess, start_router, start_shard, stop_all
from nets.codec import unpack
from nets.engine import Engine
from nets.errors import CpnError
from nets.scraper_sim import initial_targets
from router.wire import FRAME_BYTES_MAX, Handoff, HandoffAck, decode, encode

ROOT: Final = Path(__file__).resolve().parent.parent
RELAY_NET: Final = "bench.cluster_nets:relay"
RELAY_CONSUMED_NET: Final = "bench.cluster_nets:relay_consumed"
SCRAPER_EMPTY_NET: Final = "bench.shard_nets:scraper_zero_delay_empty"
TARGETS_PER_PUT: Final = 10_000
BURST_TOKENS: Final = 1_000
BURSTS_PER_PUT: Final = 10
LATENCY_BURST_TOKENS: Final = 50
LATENCY_BURST_GAP_S: Final = 0.01
RAW_WINDOW_MESSAGES: Final = 8
RUN_TOKENS: Final = 5_000  # as the shard cuts runs (shard/exchange.py RUN_TOKENS_MAX)
POLL_S: Final = 0.005
# Statistics cost the shard a little CPU each: during the scraper runs, which keep both
# cores busy, they are asked for less often (the rate's error is at most this / run).
STATS_POLL_S: Final = 0.025
WAIT_S_MAX: Final = 300.0
HANDOFF_TOKENS_PER_S_MIN: Final = 150_000
HANDOFF_RATIO_MIN: Final = 0.25
CONSUME_RATIO_MIN: Final = 0.7
SCALING_MIN: Final = 1.7
SCALING_ROUNDS: Final = 3
CONSUME_ROUNDS: Final = 3


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), **(extra or {})}


def _cluster(
    net: str, root: Path, shards: int, *, durability: str, env: dict[str, str] | None = None
) -> list[ShardProcess]:
    """A router and shards (even one: both runs pay the same); [router, shard 0, ...]."""
    handles: list[ShardProcess] = []
    try:
        router = start_router(net, root / "router", shards=shards, env=_env(env))
        handles.append(router)
        for k in range(shards):
            extra = ("--shard-id", str(k), "--shards", str(shards), "--router", router.endpoint)
            handles.append(
                start_shard(
                    net,
                    root / f"shard-{k}",
                    durability=durability,
                    extra_args=extra,
                    env=_env(env),
                )
            )
        return handles
    except BaseException:
        stop_all(handles)
        raise


def _wait_peers_known(client: ShardClient) -> None:
    """Until the shard learnt its peers' endpoints from the router."""
    deadline = time.monotonic() + 30
    while not all(client.stats()["endpoints"]):
        if time.monotonic() > deadline:
            raise CpnError("the shards did not learn each other's endpoints in 30 s")
        time.sleep(POLL_S)


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used, from /proc (None without it).

    Wall-time rates on a 2-core machine shared with other work are noisy; the CPU a
    shard spent per token is not, so the benchmark reports both."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _us_per_token(before: float | None, after: float | None, tokens: int) -> float | None:
    if before is None or after is None or not tokens:
        return None
    return round((after - before) * 1e6 / tokens, 2)


def _wait_count(client: ShardClient, place: str, count: int) -> float:
    deadline = time.monotonic() + WAIT_S_MAX
    while client.counts()[place] < count:
        if time.monotonic() > deadline:
            raise CpnError(f"{place} did not reach {count} tokens in {WAIT_S_MAX} s")
        time.sleep(POLL_S)
    return time.perf_counter()


# -- 1 and 2: handoff ---------------------------------------------------------------------


# How a measurement starts its cluster: (net, root, shards, durability) -> [router, shards...].
# bench/multihost.py passes one that starts them on other network namespaces.
StartCluster = Callable[..., list[ShardProcess]]


@contextlib.contextmanager
def _relay(
    net: str, root: Path, start: StartCluster | None
) -> Iterator[tuple[list[ShardProcess], ShardClient, ShardClient]]:
    """A router and two fsync shards of ``net`` (the sender, shard 0, and the receiver),
    with a client of each once both know their peer; every process stopped after."""
    handles = (start or _cluster)(net, root, 2, durability="fsync")
    try:
        sender = ShardClient(handles[1].endpoint, timeout_ms=30_000)
        receiver = ShardClient(handles[2].endpoint, timeout_ms=30_000)
        with sender, receiver:
            _wait_peers_known(sender)
            _wait_peers_known(receiver)
            yield handles, sender, receiver
    finally:
        stop_all(handles)


def time_handoff(
    tokens: int, latency_tokens: int, root: Path, *, start: StartCluster | None = None
) -> dict[str, Any]:
    with _relay(RELAY_NET, root / "relay", start) as (handles, sender, receiver):
        # Light load first (small bursts, spaced): the receiver's latencies are then
        # those of single handoffs, not of a queue.
        light = latency_tokens // LATENCY_BURST_TOKENS
        for i in range(light):
            sender.put("bursts", [tuple(burst(i, LATENCY_BURST_TOKENS))])
            time.sleep(LATENCY_BURST_GAP_S)
        base = light * LATENCY_BURST_TOKENS
        _wait_count(receiver, "arrived", base)
        quiet = receiver.stats()
        bursts = [tuple(burst(light + i, BURST_TOKENS)) for i in range(tokens // BURST_TOKENS)]
        moved = len(bursts) * BURST_TOKENS
        before = sender.stats()["counters"]
        cpu_before = _cpu_s(handles[2].pid)
        started = time.perf_counter()
        for i in range(0, len(bursts), BURSTS_PER_PUT):
            sender.put("bursts", bursts[i : i + BURSTS_PER_PUT])
        done = _wait_count(receiver, "arrived", base + moved)
        cpu_after = _cpu_s(handles[2].pid)
        loaded = sender.stats()["counters"]
    messages = max(1, loaded["handoff_messages_sent"] - before.get("handoff_messages_sent", 0))
    offered = loaded["handoff_tokens_offered"] - before.get("handoff_tokens_offered", 0)
    return {
        "tokens": moved,
        "seconds": done - started,
        "per_s": moved / (done - started),
        "tokens_per_message": offered / messages,
        "messages": messages,
        "p50_ms": quiet["handoff_ms_p50"],
        "p99_ms": quiet["handoff_ms_p99"],
        "light_tokens": base,
        "receiver_us_per_token": _us_per_token(cpu_before, cpu_after, moved),
    }


# -- 3: handoff consumed, against the receiving engine alone -------------------------------


def _wait_fired(client: ShardClient, transition: str, count: int) -> float:
    """Until ``count`` firings of ``transition`` are committed (the stored totals)."""
    deadline = time.monotonic() + WAIT_S_MAX
    while client.stats()["firings_total"].get(transition, 0) < count:
        if time.monotonic() > deadline:
            raise CpnError(f"{transition} did not fire {count} times in {WAIT_S_MAX} s")
        time.sleep(POLL_S)
    return time.perf_counter()


def time_handoff_consumed(
    tokens: int, root: Path, *, start: StartCluster | None = None
) -> dict[str, Any]:
    with _relay(RELAY_CONSUMED_NET, root / "consumed", start) as (handles, sender, receiver):
        bursts = [tuple(burst(i, BURST_TOKENS)) for i in range(tokens // BURST_TOKENS)]
        moved = len(bursts) * BURST_TOKENS
        cpu_before = _cpu_s(handles[2].pid)
        started = time.perf_counter()
        for i in range(0, len(bursts), BURSTS_PER_PUT):
            sender.put("bursts", bursts[i : i + BURSTS_PER_PUT])
        done = _wait_fired(receiver, "absorb", moved)
        cpu_after = _cpu_s(handles[2].pid)
        left = receiver.counts()["arrived"]
    if left:
        raise CpnError(f"absorb fired {moved} times but {left} parcels are left in 'arrived'")
    return {
        "tokens": moved,
        "seconds": done - started,
        "per_s": moved / (done - started),
        "receiver_us_per_token": _us_per_token(cpu_before, cpu_after, moved),
    }


def time_local_consume(tokens: int) -> dict[str, Any]:
    """The receiving engine alone: the same parcels put, then ``absorb`` fired."""
    engine = Engine(relay_consumed())
    work = [p for i in range(tokens // BURST_TOKENS) for p in parcels(burst(i, BURST_TOKENS))]
    started, cpu_started = time.perf_counter(), time.process_time()
    for parcel in work:
        engine.add("arrived", parcel)
    fired = sum(1 for _step in engine.run(until=0))
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    if fired != len(work) or engine.count("arrived"):
        raise CpnError(f"the local engine fired absorb {fired} times for {len(work)} parcels")
    return {
        "tokens": fired,
        "seconds": elapsed,
        "per_s": fired / elapsed,
        "us_per_token": round(cpu_s * 1e6 / fired, 2),
    }


# -- 4: the raw ceiling ---------------------------------------------------------------------


def _raw_sink(endpoint_queue: Any) -> None:
    """Child process: decode every Handoff frame and run, acknowledge each frame."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    endpoint_queue.put(f"tcp://127.0.0.1:{port}")
    ack = encode(HandoffAck((), (), ()), message_id=0)
    try:
        while True:
            peer, frame = socket.recv_multipart()
            if frame == b"stop":
                break
            message = decode(frame).message
            assert isinstance(message, Handoff)
            for _lane, _first, _count, entries in message.runs:
                unpack(entries)
            socket.send_multipart([peer, ack])
    finally:
        socket.close(linger=0)
        context.term()


def time_raw(tokens: int, tokens_per_message: int) -> dict[str, Any]:
    entries = [("arrived", 0, tuple(p)) for p in parcels(burst(0, tokens_per_message))]
    runs = []
    for start in range(0, len(entries), RUN_TOKENS):
        chunk = entries[start : start + RUN_TOKENS]
        runs.append((7, start + 1, len(chunk), msgpack.packb(chunk, use_bin_type=True)))
    frame = encode(Handoff(0, 1, tuple(runs)), message_id=0)
    messages = max(1, tokens // tokens_per_message)
    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    child = spawn.Process(target=_raw_sink, args=(queue,), daemon=True)
    child.start()
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(queue.get(timeout=30))
        started = time.perf_counter()
        sent = acked = 0
        while acked < messages:
            while sent < messages and sent - acked < RAW_WINDOW_MESSAGES:
                # A fresh encoding per message, as the shard encodes each message it sends.
                socket.send(encode(Handoff(0, 1, tuple(runs)), message_id=sent))
                sent += 1
            socket.recv()
            acked += 1
        elapsed = time.perf_counter() - started
        socket.send(b"stop")
    finally:
        socket.close(linger=0)
        context.term()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    return {
        "tokens": messages * tokens_per_message,
        "per_s": messages * tokens_per_message / elapsed,
        "frame_bytes": len(frame),
    }


# -- 5: scaling ---------------------------------------------------------------------------


def _finished(stats: Sequence[dict[str, Any]], targets: int) -> bool:
    done = sum(s["firings"].get("fetched", 0) + s["firings"].get("give_up", 0) for s in stats)
    return bool(done == targets)


def time_scraper(
    targets: int, shards: int, root: Path, *, start: StartCluster | None = None
) -> dict[str, Any]:
    handles = (start or _cluster)(
        SCRAPER_EMPTY_NET, root / f"scraper-{shards}", shards, durability="process"
    )
    work = [tuple(t) for t in initial_targets(zero_delay_params(targets))]
    try:
        with ClusterClient(handles[0].endpoint, timeout_ms=30_000) as cluster:
            deadline = time.monotonic() + 30
            while not all(cluster.table(refresh=True).endpoints):  # first heartbeats
                if time.monotonic() > deadline:
                    raise CpnError("the shards did not report to the router in 30 s")
                time.sleep(POLL_S)
            clients = [cluster.shard(k) for k in range(shards)]
            for client in clients:
                _wait_peers_known(client)
            # Targets first: nothing fires without a proxy. Then the proxies (a pool:
            # the client deals them round robin), and every shard starts at once.
            for i in range(0, len(work), TARGETS_PER_PUT):
                cluster.put("targets", work[i : i + TARGETS_PER_PUT])
            started, started_wall_s = time.perf_counter(), time.time()
            cluster.put("proxies", [(f"proxy{i:03d}",) for i in range(PROXIES)])
            deadline = time.monotonic() + WAIT_S_MAX
            while True:
                stats = [c.stats() for c in clients]
                now = time.perf_counter()
                if _finished(stats, targets):
                    break
                if time.monotonic() > deadline:
                    raise CpnError(f"{shards} shard(s) did not finish {targets} targets")
                time.sleep(STATS_POLL_S)
    finally:
        stop_all(handles)
    firings = sum(sum(s["firings"].values()) for s in stats)
    committed_s = max(s.get("firings_committed_ms", 0) for s in stats) / 1000 - started_wall_s
    # The reply's time if the commit's is out of reach (a clock step, an older shard).
    seconds = committed_s if 0 < committed_s <= now - started else now - started
    return {
        "firings": firings,
        "seconds": seconds,
        "per_s": firings / seconds,
        "seconds_to_reply": now - started,
    }


# -- main -----------------------------------------------------------------------------------


def _median_or_none(values: list[float | None]) -> float | None:
    """The median of the values read (a CPU time from /proc may be missing: None)."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and targets")
    args = parser.parse_args(argv)
    tokens = 200_000 if args.quick else 1_000_000
    latency_tokens = 5_000 if args.quick else 20_000
    targets = 20_000 if args.quick else 100_000
    root = Path(tempfile.mkdtemp(prefix="cpn-bench-cluster-"))
    started = time.perf_counter()
    try:
        handoff = time_handoff(tokens, latency_tokens, root)
        print(
            f"handoff (fsync, 2 shards): {handoff['tokens']:,} tokens in "
            f"{handoff['seconds']:.2f} s = {handoff['per_s']:,.0f} tokens/s "
            f"({handoff['messages']} messages, {handoff['tokens_per_message']:,.0f} tokens "
            f"each); target {HANDOFF_TOKENS_PER_S_MIN:,}: "
            f"{_verdict(handoff['per_s'] >= HANDOFF_TOKENS_PER_S_MIN)}"
        )
        print(
            f"handoff latency under light load ({handoff['light_tokens']:,} tokens): "
            f"p50 {handoff['p50_ms']:.1f} ms, p99 {handoff['p99_ms']:.1f} ms"
        )
        per_message = max(1, round(handoff["tokens_per_message"]))
        raw = time_raw(tokens, per_message)
        ratio = handoff["per_s"] / raw["per_s"]
        print(
            f"raw ZeroMQ + msgpack ceiling: {raw['per_s']:,.0f} tokens/s in messages of "
            f"{per_message:,} tokens ({raw['frame_bytes']:,} bytes); handoff / raw = "
            f"{ratio:.3f}, target {HANDOFF_RATIO_MIN}: {_verdict(ratio >= HANDOFF_RATIO_MIN)}"
        )
        # The cluster, then the engine alone, back to back, CONSUME_ROUNDS times; the
        # figures are the rounds' medians (timed apart, a passing load moved one side).
        consume_rounds = []
        for i in range(CONSUME_ROUNDS):
            (root / f"consume-{i}").mkdir()
            consume_rounds.append(
                (
                    time_handoff_consumed(tokens // 2, root / f"consume-{i}"),
                    time_local_consume(tokens // 2),
                )
            )
        consume_ratios = [c["per_s"] / lo["per_s"] for c, lo in consume_rounds]
        consume_ratio = statistics.median(consume_ratios)
        consumed = {
            "tokens": consume_rounds[0][0]["tokens"],
            "per_s": statistics.median(c["per_s"] for c, _ in consume_rounds),
            "receiver_us_per_token": _median_or_none(
                [c["receiver_us_per_token"] for c, _ in consume_rounds]
            ),
        }
        local = {
            "per_s": statistics.median(lo["per_s"] for _, lo in consume_rounds),
            "us_per_token": statistics.median(lo["us_per_token"] for _, lo in consume_rounds),
        }
        print(
            f"handoff consumed (fsync, 2 shards), median of {CONSUME_ROUNDS} rounds: "
            f"{consumed['tokens']:,} parcels handed off and consumed at "
            f"{consumed['per_s']:,.0f}/s; the receiving engine alone {local['per_s']:,.0f}/s; "
            f"consume_ratio {consume_ratio:.3f} "
            f"({', '.join(f'{r:.3f}' for r in consume_ratios)}), target {CONSUME_RATIO_MIN}: "
            f"{_verdict(consume_ratio >= CONSUME_RATIO_MIN)}"
        )
        print(
            f"receiving shard's CPU per token: handoff {handoff['receiver_us_per_token']} us, "
            f"handoff consumed {consumed['receiver_us_per_token']} us; the engine alone "
            f"{local['us_per_token']} us"
        )
        # One shard, then two, back to back, SCALING_ROUNDS times; each figure is the
        # median of the rounds': a quick run of one shard is about 0.3 s, and a load
        # that comes and goes moved one side of a single pair's ratio alone.
        rounds = [
            (
                time_scraper(targets, 1, root / f"round-{i}"),
                time_scraper(targets, 2, root / f"round-{i}"),
            )
            for i in range(SCALING_ROUNDS)
        ]
        ratios = [two["per_s"] / one["per_s"] for one, two in rounds]
        scaling = statistics.median(ratios)
        one_per_s = statistics.median(one["per_s"] for one, _ in rounds)
        two_per_s = statistics.median(two["per_s"] for _, two in rounds)
        scaling_to_reply = statistics.median(
            one["seconds_to_reply"] / two["seconds_to_reply"] for one, two in rounds
        )
        print(
            f"scraper workload ({targets:,} targets, delays 0), median of {SCALING_ROUNDS} "
            f"rounds: 1 shard {one_per_s:,.0f} firings/s, 2 shards {two_per_s:,.0f} "
            f"firings/s; scaling {scaling:.2f} ({', '.join(f'{r:.2f}' for r in ratios)}), "
            f"target {SCALING_MIN}: {_verdict(scaling >= SCALING_MIN)}"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"wall time {time.perf_counter() - started:.1f} s, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        json.dumps(
            {
                "handoff_tokens_per_s": round(handoff["per_s"]),
                "raw_ceiling_per_s": round(raw["per_s"]),
                "handoff_ratio": round(ratio, 4),
                "handoff_p50_ms": handoff["p50_ms"],
                "handoff_p99_ms": handoff["p99_ms"],
                "one_shard_per_s": round(one_per_s),
                "two_shards_per_s": round(two_per_s),
                "scaling": round(scaling, 3),
                "consumed_tokens_per_s": round(consumed["per_s"]),
                "local_consume_per_s": round(local["per_s"]),
                "consume_ratio": round(consume_ratio, 4),
                # CPU the receiving shard spent per token (less noisy than the rates).
                "handoff_receiver_us_per_token": handoff["receiver_us_per_token"],
                "consumed_receiver_us_per_token": consumed["receiver_us_per_token"],
                "local_consume_us_per_token": local["us_per_token"],
                # Scaling timed to the statistics reply, as before firings_committed_ms.
                "scaling_to_reply": round(scaling_to_reply, 3),
                "scaling_rounds": [round(r, 3) for r in ratios],
                "consume_rounds": [round(r, 4) for r in consume_ratios],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
