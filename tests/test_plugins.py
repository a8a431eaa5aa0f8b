"""Plugin discovery: ``module:Class`` references, ``vwos.services`` entry points, and what goes wrong."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from vwos._plugins import (
    ENTRY_POINT_GROUP,
    PluginError,
    PluginInfo,
    installed_plugins,
    load_plugin,
    prepend_sys_path,
)
from vwos._service import NoConfig, Service

# Every module these tests write is called vwos_pt_*, and forgotten again after each test.
DEMO = """
import attrs

from vwos._service import NoConfig, Service


@attrs.frozen
class DemoConfig:
    limit: float = 1.0


class Demo(Service[DemoConfig]):
    pass


class Outer:
    class Inner(Service[NoConfig]):
        pass


class NotAService:
    pass


def factory():
    return Demo


NOT_A_SERVICE = 42
"""


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    saved_path = sys.path[:]
    yield
    sys.path[:] = saved_path
    for name in [name for name in sys.modules if name.startswith("vwos_pt_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory on sys.path holding the test plugin modules."""
    site = tmp_path / "site"
    site.mkdir()
    write(site / "vwos_pt_demo.py", DEMO)
    write(site / "vwos_pt_broken.py", "import math\n\nraise RuntimeError('no CAN bus here')\n")
    write(site / "vwos_pt_needs_dependency.py", "import vwos_pt_missing_dependency\n")
    write(site / "vwos_pt_syntax.py", "def broken(:\n    pass\n")
    prepend_sys_path([site])
    return site


def write(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source), encoding="utf-8")


def add_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """Install a fake distribution declaring ``entry_points`` in the vwos.services group into ``site``."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{key} = {value}" for key, value in entry_points.items())]
    write(info / "entry_points.txt", "\n".join(lines) + "\n")
    importlib.invalidate_caches()


def plugin_error(ref: str) -> PluginError:
    with pytest.raises(PluginError) as info:
        load_plugin(ref)
    return info.value


# -- module:Class ----------------------------------------------------------------------------------------


def test_module_class_reference_loads_the_service_class(site: Path) -> None:
    cls = load_plugin("vwos_pt_demo:Demo")
    module = sys.modules["vwos_pt_demo"]
    assert cls is module.Demo
    assert cls.config_class is module.DemoConfig


def test_dotted_attribute_path(site: Path) -> None:
    cls = load_plugin("vwos_pt_demo:Outer.Inner")
    assert cls is sys.modules["vwos_pt_demo"].Outer.Inner
    assert cls.config_class is NoConfig


def test_missing_module(site: Path) -> None:
    error = plugin_error("vwos_pt_nosuch:Thing")
    assert str(error) == "vwos_pt_nosuch:Thing: no module named 'vwos_pt_nosuch'"
    assert error.ref == "vwos_pt_nosuch:Thing"


def test_missing_submodule(site: Path) -> None:
    assert str(plugin_error("vwos_pt_nosuch.cars:Thing")) == (
        "vwos_pt_nosuch.cars:Thing: no module named 'vwos_pt_nosuch'"
    )
    assert str(plugin_error("vwos_pt_demo.cars:Thing")) == (
        "vwos_pt_demo.cars:Thing: no module named 'vwos_pt_demo.cars'"
    )


def test_missing_attribute(site: Path) -> None:
    assert str(plugin_error("vwos_pt_demo:Nope")) == (
        "vwos_pt_demo:Nope: module 'vwos_pt_demo' has no attribute 'Nope'"
    )
    assert str(plugin_error("vwos_pt_demo:Outer.Nope")) == (
        "vwos_pt_demo:Outer.Nope: 'vwos_pt_demo:Outer' has no attribute 'Nope'"
    )


@pytest.mark.parametrize(
    ("ref", "what"),
    [
        ("vwos_pt_demo:NOT_A_SERVICE", "int 42"),
        ("vwos_pt_demo:NotAService", "the class vwos_pt_demo.NotAService"),
        ("vwos_pt_demo:factory", "the function vwos_pt_demo.factory"),
        ("vwos_pt_demo:attrs", "the module 'attrs'"),
        ("vwos_pt_demo:DemoConfig", "the class vwos_pt_demo.DemoConfig"),
    ],
)
def test_not_a_service_subclass(site: Path, ref: str, what: str) -> None:
    assert str(plugin_error(ref)) == f"{ref} is not a vwos Service subclass (it is {what})"


def test_the_base_class_itself_is_refused() -> None:
    assert str(plugin_error("vwos._service:Service")) == (
        "vwos._service:Service is the Service base class itself, not a service"
    )


def test_module_that_raises_on_import(site: Path) -> None:
    message = str(plugin_error("vwos_pt_broken:Thing"))
    assert message == (
        "vwos_pt_broken:Thing: importing module 'vwos_pt_broken' failed: RuntimeError: no CAN bus here "
        f"({site / 'vwos_pt_broken.py'}, line 3)"
    )


def test_module_whose_own_import_fails_is_not_reported_as_missing(site: Path) -> None:
    message = str(plugin_error("vwos_pt_needs_dependency:Thing"))
    assert message == (
        "vwos_pt_needs_dependency:Thing: importing module 'vwos_pt_needs_dependency' failed: "
        "ModuleNotFoundError: No module named 'vwos_pt_missing_dependency' "
        f"({site / 'vwos_pt_needs_dependency.py'}, line 1)"
    )


def test_module_with_a_syntax_error(site: Path) -> None:
    message = str(plugin_error("vwos_pt_syntax:Thing"))
    assert message.startswith("vwos_pt_syntax:Thing: importing module 'vwos_pt_syntax' failed: SyntaxError: ")
    assert message.endswith("(vwos_pt_syntax.py, line 1)")


@pytest.mark.parametrize("ref", ["a:b:c", ":Thing", "module:", "1module:Thing", "module:Thing-2", "m x:Y"])
def test_malformed_references(ref: str) -> None:
    assert str(plugin_error(ref)) == (
        f"{ref}: not a valid plugin reference: expected 'module:Class' (dotted Python names, like "
        "'my_pkg.cars:Overspeed') or the name of an installed plugin"
    )


@pytest.mark.parametrize("ref", ["", "has space", "a/b"])
def test_malformed_names(ref: str) -> None:
    assert str(plugin_error(ref)) == (
        f"{ref!r} is not a plugin reference: expected 'module:Class' or the name of an installed plugin"
    )


# -- entry points ---------------------------------------------------------------------------------------


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, entry_points: dict[str, str]) -> None:
    """Make exactly ``entry_points`` the installed ones."""
    eps = [importlib.metadata.EntryPoint(k, v, ENTRY_POINT_GROUP) for k, v in entry_points.items()]
    monkeypatch.setattr("vwos._plugins._entry_points", lambda: eps)


def test_entry_point_from_an_installed_distribution(site: Path) -> None:
    add_distribution(site, "vwos_pt_dist", {"pt-demo": "vwos_pt_demo:Demo"})
    assert load_plugin("pt-demo") is sys.modules["vwos_pt_demo"].Demo


def test_unknown_entry_point_suggests_and_lists(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {"overspeed": "vwos_pt_demo:Demo", "gateway": "vwos_pt_demo:Demo"})
    assert str(plugin_error("overspede")) == (
        "overspede: no installed plugin has this name (entry point group 'vwos.services'; installed: "
        "gateway, overspeed); did you mean 'overspeed'?; to name a class directly, write 'module:Class'"
    )
    assert str(plugin_error("trip")) == (
        "trip: no installed plugin has this name (entry point group 'vwos.services'; installed: "
        "gateway, overspeed); to name a class directly, write 'module:Class'"
    )


def test_unknown_entry_point_when_none_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, {})
    assert str(plugin_error("overspeed")) == (
        "overspeed: no installed plugin has this name (entry point group 'vwos.services'; none are "
        "installed); to name a class directly, write 'module:Class'"
    )


def test_entry_point_that_fails_to_load_names_itself(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(
        monkeypatch,
        {"nope": "vwos_pt_demo:Nope", "module": "vwos_pt_demo", "extras": "vwos_pt_demo:Demo [can]"},
    )
    assert str(plugin_error("nope")) == (
        "nope (entry point 'vwos_pt_demo:Nope'): module 'vwos_pt_demo' has no attribute 'Nope'"
    )
    assert str(plugin_error("module")) == (
        "module (entry point 'vwos_pt_demo') is not a vwos Service subclass (it is the module 'vwos_pt_demo')"
    )
    assert load_plugin("extras") is sys.modules["vwos_pt_demo"].Demo


def test_ambiguous_entry_point(site: Path) -> None:
    add_distribution(site, "vwos_pt_one", {"pt-twice": "vwos_pt_demo:Demo"})
    add_distribution(site, "vwos_pt_two", {"pt-twice": "vwos_pt_demo:Outer.Inner"})
    message = str(plugin_error("pt-twice"))
    assert message.startswith("pt-twice: more than one installed plugin has this name: ")
    assert "vwos_pt_demo:Demo (from vwos_pt_one 1.0)" in message
    assert "vwos_pt_demo:Outer.Inner (from vwos_pt_two 1.0)" in message


def test_installed_plugins_reports_failures_instead_of_raising(site: Path) -> None:
    add_distribution(
        site,
        "vwos_pt_dist",
        {"pt-demo": "vwos_pt_demo:Demo", "pt-broken": "vwos_pt_broken:Thing", "pt-nope": "vwos_pt_demo:Nope"},
    )
    mine = [info for info in installed_plugins() if info.name.startswith("pt-")]
    assert [info.name for info in mine] == ["pt-broken", "pt-demo", "pt-nope"]  # sorted by name
    broken, demo, nope = mine
    assert demo == PluginInfo(
        "pt-demo", "vwos_pt_demo:Demo", "vwos_pt_dist 1.0", sys.modules["vwos_pt_demo"].Demo, None
    )
    assert broken.service_class is None
    assert broken.error is not None
    assert broken.error.startswith(
        "pt-broken (entry point 'vwos_pt_broken:Thing'): importing module 'vwos_pt_broken' failed: "
        "RuntimeError: no CAN bus here"
    )
    assert nope.service_class is None
    assert (
        nope.error
        == "pt-nope (entry point 'vwos_pt_demo:Nope'): module 'vwos_pt_demo' has no attribute 'Nope'"
    )


def test_installed_plugins_flags_ambiguous_names(site: Path) -> None:
    add_distribution(site, "vwos_pt_one", {"pt-twice": "vwos_pt_demo:Demo"})
    add_distribution(site, "vwos_pt_two", {"pt-twice": "vwos_pt_demo:Outer.Inner"})
    mine = [info for info in installed_plugins() if info.name == "pt-twice"]
    assert len(mine) == 2
    for info in mine:
        assert info.service_class is None
        assert info.error is not None
        assert info.error.startswith("pt-twice: more than one installed plugin has this name")


# -- sys.path ---------------------------------------------------------------------------------------------


def test_prepend_sys_path_is_ordered_and_idempotent(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    rest = [entry for entry in sys.path if entry not in (str(a), str(b))]
    prepend_sys_path([a, b])
    assert sys.path == [str(a), str(b), *rest]
    prepend_sys_path([a, b])
    assert sys.path == [str(a), str(b), *rest]
    prepend_sys_path([b])  # moved to the front, not duplicated
    assert sys.path == [str(b), str(a), *rest]


def test_prepend_sys_path_finds_modules_written_after_an_earlier_import(tmp_path: Path) -> None:
    prepend_sys_path([tmp_path])
    write(tmp_path / "vwos_pt_first.py", "from vwos._service import Service\nclass A(Service[None]): pass\n")
    assert issubclass(load_plugin("vwos_pt_first:A"), Service)
    write(tmp_path / "vwos_pt_second.py", "from vwos._service import Service\nclass B(Service[None]): pass\n")
    prepend_sys_path([tmp_path])
    assert issubclass(load_plugin("vwos_pt_second:B"), Service)
