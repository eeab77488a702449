import pytest

from olivine.boards import BOARDS, get_board


def test_u280_facts():
    b = get_board("u280")
    assert b.dsp48e2 == 9_024 and b.uram == 960 and b.slrs == 3
    assert b.memory.channels == 32
    assert b.memory.channel_gbps == pytest.approx(14.375)
    # The reference's bound: LLaMA2-7B at 4 bits (3.4 GB) decodes at most ~135 tokens/s.
    assert b.peak_decode_tokens_per_s(3.4e9) == pytest.approx(135.3, abs=0.1)


def test_lookup_is_exact_and_errors_list_boards():
    # one rule for every name olivine defines: exact, lower-case; a case slip gets a "did you mean"
    assert get_board("u55c") is BOARDS["u55c"]
    with pytest.raises(ValueError, match="unknown board 'U280'; did you mean 'u280'"):
        get_board("U280")
    with pytest.raises(ValueError, match="known boards .*u280"):
        get_board("u9000")


def test_bad_bytes_per_token():
    with pytest.raises(ValueError):
        get_board("u50").peak_decode_tokens_per_s(0)
