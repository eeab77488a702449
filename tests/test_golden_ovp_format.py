"""golden/ovp_format.py: the OVP bit format tables (no torch)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from olivine.golden import ovp_format as F


def _valid_pairs(fmt):
    """Every (even, odd) grid-value pair the encoder accepts."""
    pairs = list(itertools.product(fmt.normal_grid, fmt.normal_grid))
    pairs += [(o, 0) for o in fmt.outlier_grid] + [(0, o) for o in fmt.outlier_grid]
    return pairs


def test_imports_without_torch():
    code = "import sys; import olivine.golden.ovp_format as f; assert 'torch' not in sys.modules; print(len(f.FORMATS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_grids_and_bias():
    int4, flint4, int8 = (F.FORMATS[n] for n in F.NORMAL_TYPES)
    assert int4.normal_grid == tuple(range(-7, 8))
    assert [v for v in int4.outlier_grid if v > 0] == [12, 16, 24, 32, 48, 64, 96]
    assert int4.bias == 2 and int4.identifier == 0b1000 and int4.normal_max == 7
    assert [v for v in flint4.normal_grid if v >= 0] == [0, 1, 2, 3, 4, 6, 8, 16]
    assert [v for v in flint4.outlier_grid if v > 0] == [24, 32, 48, 64, 96, 128, 192]
    assert flint4.bias == 3 and flint4.normal_max == 16
    assert int8.normal_grid == tuple(range(-127, 128)) and int8.identifier == 0x80
    pos = [v for v in int8.outlier_grid if v > 0]
    assert len(pos) == 127 and pos[0] == 136 and pos[-1] == 31744 and pos == sorted(set(pos))
    for fmt in (int4, flint4, int8):
        assert fmt.outlier_grid == tuple(sorted(-v for v in fmt.outlier_grid))  # symmetric
        assert fmt.outlier_min > fmt.normal_max
        assert fmt.union_grid == tuple(sorted(fmt.normal_grid + fmt.outlier_grid))
    assert (int4.outlier_threshold, flint4.outlier_threshold, int8.outlier_threshold) == (9.5, 20.0, 131.5)


@pytest.mark.parametrize("normal", F.NORMAL_TYPES)
def test_codes_decode_to_their_values(normal):
    fmt = F.FORMATS[normal]
    lim_int = 7 if fmt.bits == 4 else 127
    lim_exp = 6 if fmt.bits == 4 else 10
    for value, code in fmt.normal_codes.items():
        assert code != fmt.identifier
        e, i = F.decode_nibble(normal, code)
        assert i * (1 << e) == value and -lim_int <= i <= lim_int and 0 <= e <= lim_exp
    for value, code in fmt.outlier_codes.items():
        assert code not in (0, fmt.identifier)  # e = m = 0 excluded: never equals the identifier
        e, i = F.decode_nibble(normal, code, outlier=True)
        assert i * (1 << e) == value and -lim_int <= i <= lim_int and 0 <= e <= lim_exp
    assert F.decode_nibble(normal, fmt.identifier) == (0, 0)
    # every code except the identifier is exactly one normal value
    assert sorted(fmt.normal_codes.values()) == [c for c in range(1 << fmt.bits) if c != fmt.identifier]


def test_bit_layouts():
    # int4 two's complement, flint4 sign-magnitude, abfloat s|e|m
    assert F.FORMATS["int4"].normal_codes[-1] == 0xF and F.FORMATS["int4"].normal_codes[7] == 0x7
    assert F.FORMATS["flint4"].normal_codes[-16] == 0xF and F.FORMATS["flint4"].normal_codes[6] == 0b0101
    assert F.FORMATS["int4"].outlier_codes[12] == 0b0001 and F.FORMATS["int4"].outlier_codes[-96] == 0b1111
    assert F.FORMATS["flint4"].outlier_codes[24] == 0b0001 and F.FORMATS["flint4"].outlier_codes[32] == 0b0010
    assert F.decode_nibble("flint4", 0b0110) == (1, 4) and F.decode_nibble("flint4", 0b1111) == (2, -4)
    assert F.FORMATS["int8"].outlier_codes[136] == 0x01 and F.FORMATS["int8"].outlier_codes[-31744] == 0xFF
    # low nibble = even element
    assert F.encode_pair("int4", 1, 2) == 0x21
    assert F.encode_pair("int4", 12, 0) == 0x81 and F.encode_pair("int4", 0, 12) == 0x18
    assert F.encode_pair("int8", 1, -1) == 0xFF01 and F.encode_pair("int8", 0, 136) == 0x0180


@pytest.mark.parametrize("normal", ["int4", "flint4"])
def test_byte_round_trip_exhaustive(normal):
    fmt = F.FORMATS[normal]
    seen = {}
    for even, odd in _valid_pairs(fmt):
        byte = F.encode_pair(normal, even, odd)
        assert byte not in (0x88, 0x08, 0x80)
        assert byte not in seen, (byte, seen.get(byte), (even, odd))
        seen[byte] = (even, odd)
        (e0, i0), (e1, i1) = F.decode_byte(normal, byte)
        assert (i0 << e0 if i0 >= 0 else -((-i0) << e0), i1 * (1 << e1)) == (even, odd)
    # the encoder reaches every byte except the three identifier-only ones
    assert len(seen) == 256 - 3
    for byte in (0x88, 0x08, 0x80):
        assert F.decode_byte(normal, byte) == ((0, 0), (0, 0))
    table = F.PAIR_DECODE_TABLES[normal]
    for byte in range(256):
        (e0, i0), (e1, i1) = F.decode_byte(normal, byte)
        assert tuple(table["exponent"][byte]) == (e0, e1) and tuple(table["integer"][byte]) == (i0, i1)
        assert tuple(table["value"][byte]) == (i0 * (1 << e0), i1 * (1 << e1))


def test_word_round_trip_int8():
    fmt = F.FORMATS["int8"]
    table = F.PAIR_DECODE_TABLES["int8"]
    words = []
    for even, odd in _valid_pairs(fmt):
        w = F.encode_pair("int8", even, odd)
        words.append(w)
        assert tuple(table["value"][w]) == (even, odd)
    assert len(set(words)) == len(words) == 255 * 255 + 2 * 254
    (e, i), victim = F.decode_word(F.encode_pair("int8", -31744, 0))
    assert (e, i, victim) == (10, -31, (0, 0))
    assert np.all(np.abs(table["integer"].astype(int)) <= 127) and table["exponent"].max() == 10


def test_errors():
    with pytest.raises(ValueError, match="unknown OVP normal type"):
        F.get_format("int5")
    with pytest.raises(ValueError, match="two outliers"):
        F.encode_pair("int4", 12, -16)
    with pytest.raises(ValueError, match="victim of an outlier must be 0"):
        F.encode_pair("int4", 12, 1)
    with pytest.raises(ValueError, match="not a flint4 normal value"):
        F.encode_pair("flint4", 5, 0)
    with pytest.raises(ValueError, match="not a int4 outlier value"):
        F.encode_pair("int4", 13, 0)
    with pytest.raises(ValueError, match="4-bit"):
        F.decode_byte("int8", 0)
    with pytest.raises(ValueError, match="8-bit"):
        F.decode_word(0, "int4")
    with pytest.raises(ValueError, match="out of range"):
        F.decode_byte("int4", 256)
    with pytest.raises(ValueError, match="not an abfloat outlier code"):
        F.decode_nibble("int4", 0, outlier=True)
