"""olivine run (sim/runtime.py): lengths checked before generating, output never discarded, EOS stop."""

import pytest
import torch

from olivine.compiler.compile import compile_main
from olivine.golden.loaders import load_model
from olivine.sim import funcsim, runtime
from olivine.sim.funcsim import SimError
from olivine.sim.runtime import RunError, Runtime, greedy_loop, run_main

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """glassllm w8a8 with prompts up to 128 and a context of 48 tokens."""
    out = tmp_path_factory.mktemp("rt") / "glass"
    assert compile_main("glassllm", preset="w8a8", out=str(out), max_context=48, quiet=True) == 0
    return str(out)


@pytest.fixture(scope="module")
def reference(artifact):
    """Tokens of an undisturbed 6-token run (ignoring EOS) and the prompt's token count."""
    tok = load_model("glassllm").tokenizer
    ids = tok.encode(PROMPT)
    toks, _ = Runtime.from_artifact(artifact).generate(ids, 6)
    return ids, toks, tok


def test_runtime_moved_and_still_importable_from_funcsim():
    assert funcsim.Runtime is runtime.Runtime and funcsim.run_main is runtime.run_main
    assert funcsim.check_against_golden is runtime.check_against_golden


def test_empty_prompt_says_it_is_empty(artifact):
    # before: "a prompt of 0 tokens does not fit the prefill bucket 128"
    with pytest.raises(RunError, match="the prompt is empty"):
        run_main(artifact, "", 4)


@pytest.mark.parametrize("n", [0, -1])
def test_non_positive_max_new_tokens_are_refused(artifact, n, capsys):
    # before: accepted silently
    with pytest.raises(RunError, match=f"--max-new-tokens {n}: must be at least 1"):
        run_main(artifact, PROMPT, n)
    assert capsys.readouterr().out == ""


def test_too_many_new_tokens_are_refused_before_generating(artifact, reference, monkeypatch, capsys):
    # before: generated for 25 s, then printed only an error
    ids, _, _ = reference
    called = []
    monkeypatch.setattr(Runtime, "prefill", lambda self, t: called.append(t))
    room = 48 + 1 - len(ids)
    with pytest.raises(RunError, match=f"at most --max-new-tokens {room} fits") as err:
        run_main(artifact, PROMPT, 200)
    assert f"--max-context {len(ids) + 199}" not in str(err.value)  # beyond glassllm's 128: recompiling cannot help
    assert "the model's own context is 128 tokens" in str(err.value) and called == []
    with pytest.raises(RunError, match="recompile with --max-context 60"):
        run_main(artifact, PROMPT, 61 - len(ids))
    assert capsys.readouterr().out == ""


def test_the_largest_allowed_count_runs(artifact, reference, monkeypatch, capsys):
    ids, _, _ = reference
    room = 48 + 1 - len(ids)
    monkeypatch.setattr(Runtime, "eos_id", property(lambda self: None))
    assert run_main(artifact, PROMPT, room, ignore_eos=True) == 0
    assert f"{room} tokens in" in capsys.readouterr().out


def test_a_prompt_longer_than_the_prompt_buckets_is_refused(artifact):
    with pytest.raises(RunError, match="--max-prompt"):
        run_main(artifact, "word " * 200, 1)


def test_output_generated_before_a_failure_is_printed(artifact, reference, monkeypatch, capsys):
    ids, toks, tok = reference
    real_decode = Runtime.decode
    steps = []

    def failing_decode(self, token):
        steps.append(token)
        if len(steps) == 3:
            raise SimError("injected failure in decode step 3")
        return real_decode(self, token)

    monkeypatch.setattr(Runtime, "decode", failing_decode)
    monkeypatch.setattr(Runtime, "eos_id", property(lambda self: None))
    with pytest.raises(SimError, match="injected"):
        run_main(artifact, PROMPT, 6)
    captured = capsys.readouterr()
    # three tokens were chosen before the third decode step failed: all of them are printed
    assert captured.out == PROMPT + tok.decode(toks[:3]) + "\n"
    assert "stopped after 3 of 6 tokens" in captured.err


def test_generation_stops_at_the_end_of_sequence_token(artifact, reference, monkeypatch, capsys):
    ids, toks, tok = reference
    # make the third generated token the model's end of sequence
    monkeypatch.setattr(Runtime, "eos_id", property(lambda self: toks[2]))
    assert run_main(artifact, PROMPT, 6) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROMPT + tok.decode(toks[:2]) + "\n")
    assert "3 tokens in" in out and "end-of-sequence" in out and "--ignore-eos" in out
    assert run_main(artifact, PROMPT, 6, ignore_eos=True) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROMPT + tok.decode(toks[:6]) + "\n") and "6 tokens in" in out


def test_the_artifacts_eos_is_the_tokenizers(artifact):
    rt = Runtime.from_artifact(artifact)
    assert rt.eos_id == load_model("glassllm").tokenizer.eos_id and rt.eos_id is not None
    assert (rt.max_prompt, rt.max_context) == (128, 48)


def test_greedy_loop_stops_on_a_stop_token_and_streams():
    vocab = 8
    logits = [torch.eye(vocab)[i] for i in (5, 2, 7, 1)]
    it = iter(logits[1:])
    seen = []
    out, chose = greedy_loop(logits[0], lambda t: next(it), 10, stop=(7,), on_token=seen.append)
    assert out == [5, 2, 7] and seen == out and len(chose) == 3


def test_unknown_backend_is_refused(artifact):
    with pytest.raises(RunError, match="--backend 'xrt'"):
        run_main(artifact, PROMPT, 2, backend="xrt")


def test_command_line_run_with_ignore_eos(artifact, reference, monkeypatch, capsys):
    from olivine import cli

    ids, toks, tok = reference
    monkeypatch.setattr(Runtime, "eos_id", property(lambda self: toks[0]))
    assert cli.main(["run", artifact, "--prompt", PROMPT, "--max-new-tokens", "3"]) == 0
    assert "1 token in" in capsys.readouterr().out
    assert cli.main(["run", artifact, "--prompt", PROMPT, "--max-new-tokens", "3", "--ignore-eos"]) == 0
    assert capsys.readouterr().out.startswith(PROMPT + tok.decode(toks[:3]) + "\n")


def _decoded_like_before(rt, name, env):
    """What the runtime executed before patching in place: the patched words, decoded."""
    from olivine.compiler import isa
    from olivine.compiler.compile import apply_patches

    return isa.decode_program(apply_patches(rt.programs[name], rt.info[name]["patches"], env))


@pytest.mark.parametrize("kind", ["prefill", "decode"])
def test_patched_program_equals_decoding_the_patched_words(artifact, kind):
    from olivine.compiler import isa
    from olivine.compiler.compile import patch_env_decode, patch_env_prefill

    rt = Runtime.from_artifact(artifact)
    name = rt._buckets(kind)[0][1]
    patches = rt.info[name]["patches"]
    assert patches
    rt._decoded[name] = isa.decode_program(rt.programs[name])
    envs = ([patch_env_prefill([5, 9, 300], rt.info[name]["bucket"], rt.meta["prefill_rows"], rt.channels),
             patch_env_prefill([1], rt.info[name]["bucket"], rt.meta["prefill_rows"], rt.channels)]
            if kind == "prefill" else [patch_env_decode(t, p, rt.channels) for t, p in ((7, 3), (400, 15), (0, 1))])
    for env in envs:
        got = rt._patched(name, patches, env)
        want = _decoded_like_before(rt, name, env)
        assert [(i.fmt, i.values) for i in got] == [(i.fmt, i.values) for i in want]
        assert any(a is not b for a, b in zip(got, rt._decoded[name]))  # patched entries are new objects


def test_patch_errors_equal_apply_patches_and_the_decoder(artifact):
    from olivine.compiler import isa
    from olivine.compiler.compile import CompileError, patch_env_decode

    rt = Runtime.from_artifact(artifact)
    name = rt._buckets("decode")[0][1]
    patches = rt.info[name]["patches"]
    rt._decoded[name] = isa.decode_program(rt.programs[name])
    bad_envs = [{}, {**patch_env_decode(3, 2, rt.channels), "pos": 1 << 40}]
    # the compiler patches no count field today: retarget one MISC patch to its count field rows, set to 0
    # (the decoder's "count" error)
    misc = next(p for p in patches if p["mnemonic"] == "MISC")
    assert isa.BY_MNEMONIC["MISC"].field("rows").kind == "count"
    for env in bad_envs:
        with pytest.raises(CompileError) as want:
            _decoded_like_before(rt, name, env)
        with pytest.raises(CompileError) as got:
            rt._patched(name, patches, env)
        assert str(got.value) == str(want.value)
    env = patch_env_decode(3, 2, rt.channels)
    zeroing = [dict(p, field="rows", base=-p["scale"] * int(env[p["var"]])) if p is misc else p for p in patches]
    rt.info[name]["patches"] = zeroing
    rt._idx.clear()
    with pytest.raises(isa.IsaError) as want:
        _decoded_like_before(rt, name, env)
    with pytest.raises(isa.IsaError) as got:
        rt._patched(name, zeroing, env)
    assert str(got.value) == str(want.value) and got.value.cause == want.value.cause == "count"


def _fresh_core(rt, art_dir):
    """A FuncSim with the artifact's weights that decodes every program afresh and runs it one by one."""
    from olivine.compiler.artifact import read_artifact

    art = read_artifact(art_dir)
    core = funcsim.FuncSim(art.config, art.meta["layout"]["channel_bytes"], art.weights)
    core.run_together = False
    return core


def _same_machine(a, b):
    import numpy as np

    assert np.array_equal(a.data, b.data)
    assert all(np.array_equal(a.buffers[k], b.buffers[k]) for k in a.buffers)
    assert all(np.array_equal(x, y) for x, y in zip(a.hbm, b.hbm))
    assert (a.stats.instructions, a.stats.by_mnemonic, a.stats.hbm_read, a.stats.hbm_written) == \
        (b.stats.instructions, b.stats.by_mnemonic, b.stats.hbm_read, b.stats.hbm_written)


@pytest.mark.parametrize("fuse", [False, True], ids=["steps", "fused attention"])
def test_patched_steps_read_each_steps_values_and_find_their_faults(artifact, fuse):
    """Decode steps whose patched instructions (KV-append STs, softmax / V-shift / RoPE positions) run on
    the forms the simulator prepared on their templates (``fuse``: each kv group's attention steps
    executed as one, FuncSim.fuse_attention): after every step (across a bucket change) the data space,
    buffers, HBM and statistics equal a core that decodes the patched words afresh and runs them one by
    one; then a patched position that breaks a field rule and a patched KV address beyond its channel
    raise the fresh core's errors."""
    from olivine.compiler.compile import apply_patches, patch_env_decode, patch_env_prefill

    rt = Runtime.from_artifact(artifact)
    rt.sim.fuse_attention = fuse
    chains = []
    execute_chain = rt.sim._execute_chain
    rt.sim._execute_chain = lambda groups: chains.append((len(groups), execute_chain(groups))) or chains[-1][1]
    ref = _fresh_core(rt, artifact)
    ids = load_model("glassllm").tokenizer.encode(PROMPT)
    name = rt._pick("prefill", len(ids))
    env = patch_env_prefill(ids, rt.info[name]["bucket"], rt.meta["prefill_rows"], rt.channels)
    logits = rt.prefill(ids)
    ref.run(apply_patches(rt.programs[name], rt.info[name]["patches"], env))
    _same_machine(rt.sim, ref)
    chains.clear()

    def step(token):
        name = rt._pick("decode", rt.length + 1)
        words = apply_patches(rt.programs[name], rt.info[name]["patches"], patch_env_decode(token, rt.length,
                                                                                          rt.channels))
        errors = []
        for run in (lambda: rt.decode(token), lambda: ref.run(words)):
            try:
                errors.append(run())
            except SimError as exc:
                errors.append(str(exc))
        return name, errors

    names = set()
    for _ in range(13):  # lengths 6..18: buckets 16 and 32
        name, (logits, _) = step(int(torch.argmax(logits)))
        names.add(name)
        _same_machine(rt.sim, ref)
    assert len(names) == 2
    prog = rt._decoded[name]
    patched = {rt._idx[name][0][p["offset"]]: p for p in rt.info[name]["patches"]}
    if fuse:  # every kv group's attention of every decode step (the prefill has none of one-row MVs)
        groups = sum(1 for i in prog if i.fmt.mnemonic == "MISC" and i.enum("op") == "softmax")
        assert chains.count((4, True)) + chains.count((3, True)) == 13 * groups and groups > 0, chains
    else:
        assert chains == []
        _prepared_on_templates(prog, patched)
    # a softmax query position at the key count (imm[15:0] = cols: the field rule), then a KV append beyond
    # its channel: the same errors as the fresh core's, and the same machine after them
    soft = next(p for k, p in patched.items() if p["mnemonic"] == "MISC" and prog[k].enum("op") == "softmax")
    st = next(p for p in rt.info[name]["patches"] if p["mnemonic"] == "ST")
    cols = prog[rt._idx[name][0][soft["offset"]]]["cols"]
    for p, base in ((soft, (soft["base"] & ~0xFFFF) + cols - rt.length), (st, len(rt.sim.hbm[0]) * 4)):
        saved = p["base"]
        p["base"] = base
        rt._idx.clear()
        chains.clear()
        _, errors = step(int(torch.argmax(logits)))
        p["base"] = saved
        rt._idx.clear()
        assert isinstance(errors[0], str) and errors[0] == errors[1], errors
        assert ("query position" in errors[0]) if p is soft else ("ST writes bytes up to" in errors[0])
        if fuse and p is soft:  # the chain with the faulting softmax refused it, writing nothing
            assert chains and not chains[-1][1], chains
        _same_machine(rt.sim, ref)


def _prepared_on_templates(prog, patched):
    """The prepared forms were taken: kept on the templates of patched instructions."""
    in_runs = {id(i) for first in prog if first.__dict__.get("_sim_run_prepared", (None,) * 4)[3] is not None
               for i in (first, *first.__dict__["_sim_run_prepared"][1])}
    kinds = set()
    for k, p in patched.items():
        t = prog[k]
        if p["mnemonic"] == "ST":
            assert t.__dict__["_sim_st_plan"][1] is not None
            kinds.add("ST")
        elif p["mnemonic"] != "MISC":
            continue
        elif t.enum("op") == "softmax":
            assert t.__dict__["_sim_prepared"][1] is not None
            kinds.add("softmax")
        elif t.enum("op") in ("vshift", "rope"):  # on its own, or in a run executed together
            assert (t.__dict__.get("_sim_prepared") or (None, None))[1] is not None or id(t) in in_runs
            kinds.add(t.enum("op"))
    assert kinds == {"ST", "softmax", "vshift", "rope"}


def test_decoding_shares_one_instruction_per_encoding_and_keeps_the_decoders_errors(artifact):
    """Runtime._decode gives isa.decode_program's instructions for every program, one object per distinct
    encoding across the buckets (what the simulator prepared for it carries over), and the decoder's
    error for a malformed word."""
    import numpy as np

    from olivine.compiler import isa

    rt = Runtime.from_artifact(artifact)
    progs = {name: rt._decode(words) for name, words in rt.programs.items()}
    for name, prog in progs.items():
        assert [(i.fmt, i.values) for i in prog] == [(i.fmt, i.values) for i in isa.decode_program(rt.programs[name])]
    a, b = (progs[n] for n in sorted(n for n in progs if rt.info[n]["kind"] == "decode")[:2])
    shared = {id(i) for i in a} & {id(i) for i in b}
    assert len(shared) > len(a) // 2  # the buckets repeat most instructions: the same objects
    words = np.array(rt.programs[sorted(progs)[0]], dtype=np.uint32)
    second = isa.program_offsets(progs[sorted(progs)[0]])[1]
    invalid = next(op for op in range(16) if op not in isa.BY_OPCODE)
    assert second > 1  # the first instruction has several words: cut inside it
    for bad in (words[:second - 1], np.concatenate([words[:second], np.array([invalid], dtype=np.uint32)])):
        with pytest.raises(isa.IsaError) as want:
            isa.decode_program(bad)
        with pytest.raises(isa.IsaError) as got:
            rt._decode(bad)
        assert str(got.value) == str(want.value)
