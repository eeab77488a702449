"""The whole core (hw/core.py OlivineCore) in cocotb + Verilator, next to sim/funcsim.py.

The host sequence of CORE_INTERFACE.md section 4, per job (sim/tb_core.py drives it):

1. every HBM channel model (cocotbext-axi AxiRam, ``channel_bytes`` each, random AR/R/W/B
   pauses with probability ``pause``) is cleared and loaded with the job's image; the program goes
   to ``prog_channel`` after that channel's used bytes, aligned to 4 KiB;
2. a clear program (LD zero_fill of every buffer) runs, so every job starts from zeroed buffers
   as a fresh :class:`~olivine.sim.funcsim.FuncSim` does;
3. the job: write prog_addr_lo/hi, prog_words, prog_channel, watchdog, gie/ier, CTRL bit0; wait
   for ``interrupt`` (at most ``max_cycles`` cycles: a run over budget is reported as a timeout and
   the core is reset, never a hang); read CTRL (ap_done, clear on read), clear ISR, read every
   status register and counter (hw/core_regs.py), snapshot every HBM byte;
4. a dump program (ST of the weight, meta, bias buffers and the data space into channel 0) makes
   the buffers' bytes visible through the core's own datapath.

:func:`run_jobs` returns per job the registers, the HBM snapshot and the buffers
(:func:`run_jobs_fast`: the same on the fast C++ harness, sim/fastsim.py, about 10x cheaper a job);
:func:`funcsim_jobs` the same facts from FuncSim on the same image and program; :func:`compare`
names every difference. One Verilator build per (configuration, core parameters): the Verilog is
cached on disk by a hash of hw/*.py and the parameters, the model by sim/rtl.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from olivine.hw import core_regs, isa
from olivine.hw.buffers import buffer_sizes
from olivine.hw.config import AcceleratorConfig, BufferConfig

__all__ = ["CoreJob", "rtl_test_config", "core_verilog", "run_jobs", "run_jobs_fast", "funcsim_jobs", "compare",
           "place_program", "BUFFER_ORDER"]

TB_DIR = Path(__file__).parent
TOP = "olivine_core"
#: Buffers in the order the dump program stores them (FuncSim names; "data" = the data space).
BUFFER_ORDER = ("weight", "meta", "bias", "data")
#: Registers the testbench reads after each job (besides the counters).
STATUS_REGISTERS = ("ctrl", "state", "cause", "field", "offset", "unit_error", "cycles_lo", "cycles_hi",
                    "stuck_ld", "stuck_st", "stuck_mpe", "stuck_sfu", "magic", "version", "config_digest", "isr")


def rtl_test_config(**overrides) -> AcceleratorConfig:
    """The core configuration of the RTL tests: small() cut down (1 chain, 4 SFU lanes, 128-bit
    AXI, 2 channels, 22 KiB of buffers) so a Verilator build and every job stay fast."""
    params = dict(board="u280", cores=1, chains_per_core=1, chain_length=16, sfu_dsp=16, hbm_channels=2,
                  axi_data_width=128,
                  buffers=BufferConfig(weight_kib=4, activation_kib=8, global_kib=8, meta_kib=1, bias_kib=1))
    params.update(overrides)
    return AcceleratorConfig(**params)


@dataclass
class CoreJob:
    """One program run: ``program`` (instructions or uint32 words), ``image`` (channel -> bytes at
    address 0), the channel holding the program and the watchdog limit."""

    program: list
    image: dict = field(default_factory=dict)
    prog_channel: int = 0
    watchdog: int = 0

    def words(self) -> np.ndarray:
        if len(self.program) and isinstance(self.program[0], isa.Instruction):
            return isa.encode_program(self.program)
        return np.asarray(self.program, dtype=np.uint32)


def place_program(job: CoreJob) -> int:
    """Byte address of the program: after the used bytes of its channel, aligned to 4 KiB."""
    used = len(job.image.get(job.prog_channel, b""))
    return -(-used // 4096) * 4096


def clear_program(config: AcceleratorConfig) -> np.ndarray:
    sizes = buffer_sizes(config.buffers)
    target = {"weight": "weight", "meta": "meta", "bias": "bias", "data": "act"}
    prog = [isa.make("LD", target=target[b], zero_fill=1, buf_addr=0, length=sizes[b]) for b in BUFFER_ORDER]
    return isa.encode_program(prog)


def dump_program(config: AcceleratorConfig) -> tuple[np.ndarray, dict[str, int]]:
    """ST of every buffer into channel 0 from address 0, one after the other; (words, offsets)."""
    sizes = buffer_sizes(config.buffers)
    source = {"weight": "weight", "meta": "meta", "bias": "bias", "data": "act"}
    prog, offsets, at = [], {}, 0
    for b in BUFFER_ORDER:
        offsets[b] = at
        prog.append(isa.make("ST", source=source[b], channel=0, hbm_addr=at, buf_addr=0, length=sizes[b]))
        at += sizes[b]
    return isa.encode_program(prog), offsets


def _hw_source_digest() -> str:
    h = hashlib.sha256()
    hw = Path(__file__).resolve().parent.parent / "hw"
    for path in sorted(hw.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def core_verilog(config: AcceleratorConfig, model_config=None, positions: int | None = None, *,
                 mpe: bool | None = False, **core_kwargs) -> str:
    """The Verilog (top ``olivine_core``) of ``hw.hdl.core_for(config, model_config, positions,
    mpe=mpe, **core_kwargs)``, the one place the core is put together: ``model_config`` /
    ``positions`` give the SFU's RoPE ROM, ``mpe`` the matrix engine (False, the default here:
    none, MM / MV fault; True: built, or the reason it cannot be; None: built when it can),
    ``core_kwargs`` OlivineCore's parameters (sfu_ops, hbm_channel_bytes, ...).

    Cached on disk (Amaranth takes ~20 s to convert the test configuration, ~1.5 min ``tiny``) by
    the hw sources, the configuration, the parameters and what the RoPE ROM holds (theta, head
    dim, positions, scaling), so model configs that give the same ROM share the Verilog."""
    from olivine.hw.sfu_rope import RopeRom
    from olivine.sim.rtl import cache_root

    rope = None if model_config is None else RopeRom.from_model_config(model_config, positions)
    rom = None if rope is None else [rope.theta, rope.head_dim, rope.positions,
                                     None if rope.scaling is None else list(rope.scaling)]
    key = hashlib.sha256(json.dumps([_hw_source_digest(), config.to_dict(), rom, mpe,
                                     repr(sorted(core_kwargs.items()))], sort_keys=True).encode()).hexdigest()[:24]
    path = cache_root() / "verilog" / f"{TOP}-{key}.v"
    if path.is_file():
        return path.read_text()
    from olivine.hw.export import verilog
    from olivine.hw.hdl import core_for

    text = verilog(core_for(config, model_config, positions, mpe=mpe, **core_kwargs), TOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return text


def run_jobs(config: AcceleratorConfig, jobs: list[CoreJob], *, channel_bytes: int = 1 << 16, pause: float = 0.0,
             max_cycles: int = 200_000, seed: int = 0, sfu_ops: tuple[str, ...] | None = None,
             waves: bool = False, mpe: bool = False, read_latency: int = 0,
             slverr: tuple[tuple[int, int, int], ...] = ()) -> list[dict]:
    """Run ``jobs`` on the RTL core (one simulation); per job a dict with ``regs`` (name -> value,
    counters as ``<unit>_<counter>`` and ``hbm<k>_<counter>``), ``timeout`` (bool), ``hbm`` (list
    of channel arrays) and ``buffers`` (name -> array, from the dump program). ``mpe``: build the
    matrix engine (hw.mpe.MatrixEngine; False: MM / MV fault). The HBM
    models (sim/tb_core.py HbmChannel): ``read_latency`` cycles from AR to the first R beat at
    least (0: the model's own), ``slverr`` (channel, first byte, end byte) windows answering
    SLVERR (keep them off the clear / dump programs' bytes: channel 0's top 4 KiB, its first
    dump_bytes)."""
    from olivine.hw.core import VERILATOR_BUILD_ARGS
    from olivine.sim.rtl import run_cocotb
    import tempfile

    text = core_verilog(config, mpe=bool(mpe), sfu_ops=sfu_ops, hbm_channel_bytes=channel_bytes)
    dump, dump_offsets = dump_program(config)
    words = [j.words() for j in jobs]
    prog_addr = [place_program(j) for j in jobs]
    for j, w, a in zip(jobs, words, prog_addr):
        if a + 4 * len(w) > channel_bytes:
            raise ValueError(f"the program ({len(w)} words at {a}) does not fit channel {j.prog_channel} "
                             f"of {channel_bytes} bytes")
    images = []
    for j in jobs:
        img = np.zeros((config.hbm_channels, channel_bytes), dtype=np.uint8)
        for ch, data in j.image.items():
            img[ch, :len(data)] = np.frombuffer(bytes(data), dtype=np.uint8)
        images.append(img)
    names = list(STATUS_REGISTERS)
    addrs = [core_regs.offset(n) for n in names]
    for u, unit in enumerate(isa.UNITS):
        for c in core_regs.UNIT_COUNTERS:
            names.append(f"{unit}_{c}")
            addrs.append(core_regs.unit_offset(u, c))
    for k in range(config.hbm_channels):
        for c in core_regs.HBM_COUNTERS:
            names.append(f"hbm{k}_{c}")
            addrs.append(core_regs.hbm_offset(k, c))
    sizes = buffer_sizes(config.buffers)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "core.npz"
        vectors = {
            "images": np.stack(images), "prog_words": np.concatenate(words) if words else np.zeros(0, np.uint32),
            "prog_len": [len(w) for w in words], "prog_addr": prog_addr, "prog_channel": [j.prog_channel for j in jobs],
            "watchdog": [j.watchdog for j in jobs], "clear": clear_program(config), "dump": dump,
            "dump_bytes": sum(sizes.values()), "reg_addr": addrs, "max_cycles": max_cycles, "pause": pause,
            "seed": seed, "channels": config.hbm_channels, "channel_bytes": channel_bytes,
            "read_latency": int(read_latency), "slverr": np.asarray(slverr, dtype=np.int64).reshape(-1, 3),
        }
        # -O0 (unless OLIVINE_VERILATOR_OPT says otherwise): cocotb makes every signal public
        # (--public-flat-rw), and the whole core's VPI symbol table is one constructor of ~4000 lines
        # that g++ -Os took more than 20 minutes to compile on the shared 2-core machine; the Python
        # AXI models dominate the cocotb run time anyway (the fast C++ harness is the one to optimise)
        run_cocotb(text, TOP, "tb_core", test_dir=TB_DIR, vectors=vectors, build_args=list(VERILATOR_BUILD_ARGS),
                   extra_env={"OLIVINE_CORE_TB_OUT": str(out)}, waves=waves, opt="-O0")
        got = np.load(out)
        results = []
        for n in range(len(jobs)):
            regs = {name: int(v) for name, v in zip(names, got["regs"][n])}
            dumped = got["dumps"][n]
            bufs = {b: dumped[dump_offsets[b]: dump_offsets[b] + sizes[b]] for b in BUFFER_ORDER}
            results.append({"regs": regs, "timeout": bool(got["timeout"][n]), "hbm": list(got["hbm"][n]),
                            "buffers": bufs, "harness_cycles": int(got["cycles"][n])})
    return results


def run_jobs_fast(harness, config: AcceleratorConfig, jobs: list[CoreJob], *, channel_bytes: int = 1 << 16,
                  pause: float = 0.0, max_cycles: int = 200_000, seed: int = 0) -> list[dict]:
    """:func:`run_jobs` on the fast C++ harness (sim/fastsim.py ``harness``, a core built for
    ``config``; e.g. sim/rtl_backend.backend_harness): the same host sequence and results (``regs``,
    ``timeout``, ``hbm``, ``buffers``), at C++ speed (about 10x cheaper a job than cocotb). Each
    job runs in a fresh simulation, so its buffers start zeroed as the clear program leaves them
    in the cocotb testbench; the dump program
    follows in the same simulation (sim.fastsim.FollowUp). The HBM model pauses each AXI channel
    with probability ``pause`` (HbmParams.pause, seeded by ``seed`` and the job), the backpressure
    of the cocotb testbench's AxiRam models. The HBM model holds ``channel_bytes`` per channel plus
    room for the dump; ``hbm`` is the first ``channel_bytes`` of each channel after the job."""
    from .fastsim import FollowUp, HbmParams

    sizes = buffer_sizes(config.buffers)
    dump, dump_offsets = dump_program(config)
    dump_bytes = sum(sizes.values())
    dump_at = -(-max(channel_bytes, dump_bytes) // 4096) * 4096
    model_bytes = dump_at + 4096 * (2 + -(-4 * len(dump) // 4096))  # the fetch reads whole bursts past the end
    results = []
    for n, job in enumerate(jobs):
        words = job.words()
        address = place_program(job)
        if address + 4 * len(words) > channel_bytes:
            raise ValueError(f"the program ({len(words)} words at {address}) does not fit channel {job.prog_channel} "
                             f"of {channel_bytes} bytes")
        image = {int(ch): bytes(data) for ch, data in job.image.items()}
        for ch, data in image.items():
            if len(data) > channel_bytes:
                raise ValueError(f"job {n}: the image of channel {ch} ({len(data)} bytes) exceeds {channel_bytes}")
        snapshots = {f"hbm{k}": (k, 0, channel_bytes) for k in range(config.hbm_channels)}
        then = [FollowUp("dump", dump, 0, dump_at, max_cycles, {"dumped": (0, 0, dump_bytes)})]
        res = harness.run_program(words, image, prog_channel=job.prog_channel, budget=max_cycles, dumps=snapshots,
                                  watchdog=job.watchdog, check_budget=False, then=then,
                                  hbm=HbmParams(channel_bytes=model_bytes, pause=pause, seed=seed * 7919 + n))
        from olivine.hw.controller import STATES

        regs = dict(res.registers)
        timeout = regs["state"] not in (STATES.index("done"), STATES.index("error"))
        if not timeout and regs["dump_state"] != STATES.index("done"):
            raise RuntimeError(f"job {n}: the dump program did not finish (state register {regs['dump_state']})")
        dumped = res.dumps["dumped"]
        results.append({"regs": regs, "timeout": timeout,
                        "hbm": [res.dumps[f"hbm{k}"] for k in range(config.hbm_channels)],
                        "buffers": {b: dumped[dump_offsets[b]: dump_offsets[b] + sizes[b]] for b in BUFFER_ORDER}})
    return results


_WORD_RE = re.compile(r"at word (\d+)")
_STUCK_RE = re.compile(r"^\s+(ld|st|mpe|sfu): instruction \d+ at word (\d+)", re.M)


def funcsim_jobs(config: AcceleratorConfig, jobs: list[CoreJob], *, channel_bytes: int = 1 << 16) -> list[dict]:
    """What sim/funcsim.py says of each job: ``state``, ``cause``, ``field``, ``offset`` (the
    status registers' meaning), ``stuck`` (word offset or None per unit, deadlocks), ``message``,
    ``hbm`` (the channels, program included), ``buffers``, ``instructions`` (per unit) and
    ``hbm_read`` / ``hbm_written`` (bytes per channel); each job on a fresh FuncSim."""
    from olivine.hw.controller import STATES, STATUS_CAUSES
    from olivine.sim.funcsim import DeadlockError, FuncSim, SimError

    out = []
    for j in jobs:
        words = j.words()
        image = {ch: bytes(d) for ch, d in j.image.items()}
        addr = place_program(j)
        prog_bytes = words.astype("<u4").tobytes()
        base = bytearray(image.get(j.prog_channel, b"")).ljust(addr + len(prog_bytes), b"\0")
        base[addr: addr + len(prog_bytes)] = prog_bytes
        image[j.prog_channel] = bytes(base)
        sim = FuncSim(config, [channel_bytes] * config.hbm_channels, image)
        res = {"state": STATES.index("done"), "cause": 0, "field": 0, "offset": 0, "stuck": [None] * 4, "message": ""}
        try:
            program = isa.decode_program(words)
        except isa.IsaError as exc:
            cause, fld = isa.error_code(exc)
            res.update(state=STATES.index("error"), cause=cause, field=fld, offset=exc.offset or 0, message=str(exc))
        else:
            try:
                sim.run(words, program)
            except DeadlockError as exc:
                stuck = [None] * 4
                for unit, off in _STUCK_RE.findall(str(exc)):
                    stuck[isa.UNITS.index(unit)] = int(off)
                res.update(state=STATES.index("error"), cause=STATUS_CAUSES.index("deadlock"), stuck=stuck,
                           message=str(exc))
            except SimError as exc:
                match = _WORD_RE.search(str(exc))
                res.update(state=STATES.index("error"), cause=STATUS_CAUSES.index("unit_fault"),
                           offset=int(match.group(1)) if match else -1, message=str(exc))
        res["instructions"] = dict(sim.stats.instructions)
        res["hbm_read"] = {k: sim.stats.hbm_read.get(k, 0) for k in range(config.hbm_channels)}
        res["hbm_written"] = {k: sim.stats.hbm_written.get(k, 0) for k in range(config.hbm_channels)}
        res["hbm"] = [h.copy() for h in sim.hbm]
        res["buffers"] = {"data": sim.data.copy(), **{b: sim.buffers[b].copy() for b in ("weight", "meta", "bias")}}
        out.append(res)
    return out


def _first_diff(got: np.ndarray, want: np.ndarray) -> str:
    bad = np.nonzero(got != want)[0]
    return f"{bad.size} bytes differ, first at {bad[0]}: got {got[bad[0]]}, want {want[bad[0]]}"


def compare(got: dict, want: dict, *, data: bool = True) -> list[str]:
    """Differences between an RTL job result and the functional simulator's (empty: equal).
    ``data``: also compare every HBM and buffer byte (skip for jobs that end in an error, where
    the RTL runs instructions the simulator never reaches)."""
    problems = []
    regs = got["regs"]
    if got["timeout"]:
        return ["the core did not finish within the cycle budget"]
    for name in ("state", "cause", "field", "offset"):
        if regs[name] != want[name]:
            problems.append(f"register {name}: RTL {regs[name]}, functional simulator {want[name]} ({want['message']})")
    if want["stuck"] != [None] * 4:
        rtl_stuck = [regs[f"stuck_{u}"] & 0xFFFFFF if regs[f"stuck_{u}"] >> 31 else None for u in isa.UNITS]
        if rtl_stuck != want["stuck"]:
            problems.append(f"stuck instructions: RTL {rtl_stuck}, functional simulator {want['stuck']}")
    if data:
        for k, (g, w) in enumerate(zip(got["hbm"], want["hbm"])):
            if not np.array_equal(g, w):
                problems.append(f"HBM channel {k}: {_first_diff(g, w)}")
        for b in BUFFER_ORDER:
            if not np.array_equal(got["buffers"][b], want["buffers"][b]):
                problems.append(f"buffer {b}: {_first_diff(got['buffers'][b], want['buffers'][b])}")
    return problems
