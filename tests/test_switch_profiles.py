"""Switch profiles: the shipped files, parsing errors that name file and key, unit normalisation
and the port -> OID index mapping."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalerunner.coordinator.errors import ConfigError
from scalerunner.coordinator.power.profiles import (
    DEFAULT_DIR,
    PethOids,
    PortPower,
    Profile,
    load_profile,
    load_profiles,
    loads_profile,
    parse_oid,
    to_watts,
)
from scalerunner.sim.poe_model import MAIN_PSE, PETH_PORT, SIM_PORT_POWER_MW

VENDOR_OIDS = {
    "cisco": ("1.3.6.1.4.1.9.9.402.1.2.1.9", "mW", "group.port"),
    "netgear": ("1.3.6.1.4.1.4526.10.15.1.1.1.2", "mW", "group.port"),
    "aruba": ("1.3.6.1.4.1.11.2.14.11.1.9.1.1.1.3", "mW", "group.port"),
    "tplink": ("1.3.6.1.4.1.11863.6.56.1.1.2.1.1.7", "0.1W", "port"),
    "scalerunner-sim": (".".join(map(str, SIM_PORT_POWER_MW)), "mW", "group.port"),
}


def test_every_shipped_profile_loads_with_rfc3621_defaults_and_says_where_its_oids_come_from() -> None:
    profiles = load_profiles(DEFAULT_DIR)
    assert set(profiles) == {"generic-rfc3621", *VENDOR_OIDS}
    for name, profile in profiles.items():
        assert profile.name == name
        assert profile.sources, name
        assert parse_oid(profile.peth.admin_enable) == (*PETH_PORT, 3)
        assert parse_oid(profile.peth.detection_status) == (*PETH_PORT, 6)
        assert parse_oid(profile.peth.main_power) == (*MAIN_PSE, 2)
        assert parse_oid(profile.peth.main_consumption) == (*MAIN_PSE, 4)
        text = (DEFAULT_DIR / f"{name}.toml").read_text()
        assert text.startswith("#"), f"{name}.toml must say where its OIDs come from"
    assert profiles["generic-rfc3621"].port_power is None
    for name, (oid, unit, index) in VENDOR_OIDS.items():
        pp = profiles[name].port_power
        assert pp is not None
        assert (pp.oid, pp.unit, pp.index) == (oid, unit, index)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('description = "x"\n', "name", "required"),
        ('name = "p"\ndescription = "x"\ncolour = 1\n', "colour", "unknown key"),
        (
            'name = "p"\ndescription = "x"\n[port_power]\noid = "1.3.6"\nunit = "kW"\n',
            "port_power.unit",
            "'mW'",
        ),
        ('name = "p"\ndescription = "x"\n[port_power]\noid = "1.3.x"\nunit = "W"\n', "port_power.oid", ""),
        ('name = "p"\ndescription = "x"\n[port_power]\nunit = "W"\n', "port_power.oid", "required"),
        (
            'name = "p"\ndescription = "x"\n[peth]\nmain_consumption_unit = "A"\n',
            "peth.main_consumption_unit",
            "",
        ),
        (
            'name = "p"\ndescription = "x"\n[port_power]\noid = "1.3"\nunit = "W"\nindex = "ifx"\n',
            "port_power.index",
            "",
        ),
        ('name = "p"\ndescription = "x"\nmax_port = 0\n', "max_port", ""),
        ('name = "other"\ndescription = "x"\n', "name", "file is 'p.toml'"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, body: str, key: str, words: str
) -> None:
    path = _write(tmp_path, "p", body)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert err.value.path == str(path)
    assert err.value.key == key
    assert words in err.value.detail
    assert str(path) in str(err.value)


def test_toml_syntax_errors_and_missing_directories_name_the_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "p", "name = \n")
    with pytest.raises(ConfigError, match="TOML syntax error") as err:
        load_profile(path)
    assert err.value.path == str(path)
    with pytest.raises(ConfigError, match="no such profile directory"):
        load_profiles(tmp_path / "nowhere")


oids = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20).map(lambda rest: (1, *rest))
units = st.sampled_from(["W", "mW", "0.1W"])
names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(oid=oids, dot=st.booleans())
def test_an_oid_string_parses_back_to_its_numbers(oid: tuple[int, ...], dot: bool) -> None:
    text = ("." if dot else "") + ".".join(map(str, oid))
    assert parse_oid(text) == oid


@given(raw=st.integers(0, 2**32 - 1), unit=units)
def test_readings_are_normalised_to_watts_exactly_to_the_unit(raw: int, unit: str) -> None:
    per_unit = {"W": Fraction(1), "mW": Fraction(1, 1000), "0.1W": Fraction(1, 10)}[unit]
    assert to_watts(raw, unit) == pytest.approx(float(raw * per_unit), rel=1e-12, abs=1e-12)
    assert to_watts(raw, unit) >= 0


@given(
    name=names,
    oid=oids,
    unit=units,
    index=st.sampled_from(["group.port", "port"]),
    offset=st.integers(-5000, 5000),
    peth_offset=st.integers(-5000, 5000),
    max_port=st.none() | st.integers(1, 4096),
    consumption_unit=units,
)
def test_any_valid_profile_text_loads_to_what_it_says(
    name: str,
    oid: tuple[int, ...],
    unit: str,
    index: str,
    offset: int,
    peth_offset: int,
    max_port: int | None,
    consumption_unit: str,
) -> None:
    lines = [f"name = {json.dumps(name)}", 'description = "generated"']
    if max_port is not None:
        lines.append(f"max_port = {max_port}")
    lines += [
        "[peth]",
        f"main_consumption_unit = {json.dumps(consumption_unit)}",
        f"port_offset = {peth_offset}",
    ]
    lines += ["[port_power]", f'oid = "{".".join(map(str, oid))}"', f'unit = "{unit}"', f'index = "{index}"']
    lines.append(f"port_offset = {offset}")
    profile = loads_profile("\n".join(lines) + "\n", f"/profiles/{name}.toml")
    assert profile.max_port == max_port
    assert profile.peth.main_consumption_unit == consumption_unit
    assert profile.port_power == PortPower(
        oid=".".join(map(str, oid)), unit=unit, index=index, port_offset=offset
    )  # type: ignore[arg-type]


@given(
    group=st.integers(1, 64),
    port=st.integers(1, 4096),
    offset=st.integers(-100, 10000),
    index=st.sampled_from(["group.port", "port"]),
)
def test_a_port_maps_to_the_oid_index_its_profile_says(
    group: int, port: int, offset: int, index: str
) -> None:
    pp = PortPower(oid="1.3.6.1.4.1.1", unit="mW", index=index, port_offset=offset)  # type: ignore[arg-type]
    expected = (group, port + offset) if index == "group.port" else (port + offset,)
    assert pp.port_index(group, port) == expected
    peth = PethOids(port_offset=offset)
    assert peth.port_index(group, port) == (group, port + offset)
    profile = Profile(name="p", description="d", peth=peth, port_power=pp)
    why = profile.check_port(port)
    assert (why is None) == (port + offset >= 1)


@given(max_port=st.integers(1, 100), port=st.integers(-3, 200))
def test_ports_outside_the_profile_are_refused_with_a_reason(max_port: int, port: int) -> None:
    profile = Profile(name="p", description="d", max_port=max_port)
    why = profile.check_port(port)
    assert (why is None) == (1 <= port <= max_port)
    if why is not None:
        assert str(port) in why
