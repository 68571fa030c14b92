"""Plugin discovery and the typed registries of engines and runtimes.

Entry points of the group ``claude_db`` are loaded one by one: a plugin that
fails to import, misspells a hook, or registers a name twice is reported and
skipped (``CLAUDE_DB_STRICT_PLUGINS=1`` makes that fatal, for plugin authors).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pluggy

from claude_db import hookspecs
from claude_db.errors import PluginError, UnknownEngineError, UsageError

if TYPE_CHECKING:
    import typer

    from claude_db.engine import Engine
    from claude_db.runtime import Runtime
    from claude_db.settings import Settings

ENTRY_POINT_GROUP = "claude_db"
#: core's own plugins, registered through the same hooks as everybody else's
DEFAULT_PLUGINS = ("claude_db.runtimes",)
#: distributions made with core, loaded before any other (they keep their engine names)
FIRST_PARTY = ("claude-db", "claude-db-postgres", "claude-db-mysql", "claude-db-mongo")

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class LoadError:
    plugin: str
    distribution: str | None
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}{self._where} skipped: {self.message}"

    def fatal(self) -> str:
        """The message when CLAUDE_DB_STRICT_PLUGINS makes the problem fatal."""
        return (
            f"plugin {self.plugin!r}{self._where} failed to load: {self.message} "
            "(CLAUDE_DB_STRICT_PLUGINS is set)"
        )

    @property
    def _where(self) -> str:
        return f" (distribution {self.distribution})" if self.distribution else ""


class Registry(Generic[T]):
    """Classes keyed by their ``name`` attribute, remembering which plugin gave each."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}
        self._owners: dict[str, str] = {}

    def add(self, cls: type[T], owner: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self.kind} class {cls.__qualname__} has no 'name' attribute")
        if name in self._classes:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by {self._owners[name]!r} and {owner!r}"
            )
        self._classes[name] = cls
        self._owners[name] = owner

    def get(self, name: str) -> type[T]:
        return self._classes[name]

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def owned_by(self, owner: str) -> list[str]:
        return sorted(name for name, who in self._owners.items() if who == owner)

    def remove_owner(self, owner: str) -> None:
        """Forget every class ``owner`` registered (the plugin is skipped or unregistered)."""
        for name in self.owned_by(owner):
            del self._classes[name], self._owners[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def items(self) -> Iterable[tuple[str, type[T]]]:
        return sorted(self._classes.items())


@dataclass
class Plugins:
    """The loaded plugins: a pluggy manager plus the registries filled through its hooks."""

    pm: pluggy.PluginManager
    engines: Registry[Engine]
    runtimes: Registry[Runtime]
    errors: list[LoadError] = field(default_factory=list)
    distributions: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    #: installed entry points not loaded because of CLAUDE_DB_LOAD_PLUGINS / _DISABLE_PLUGINS
    not_selected: list[tuple[str, str | None]] = field(default_factory=list)
    #: CLAUDE_DB_STRICT_PLUGINS: a plugin failing in a hook is fatal instead of reported
    strict: bool = False

    @property
    def hook(self) -> Any:
        """Call hooks: ``plugins.hook.session_started(session=...)`` (see :class:`GuardedHooks`)."""
        return GuardedHooks(self)

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            raise UnknownEngineError(self._why_no_engine(name))
        return self.engines.get(name)()

    def _why_no_engine(self, name: str) -> str:
        import difflib

        names = self.engines.names()
        unknown = f"unknown engine {name!r} (installed: {', '.join(names) or 'none'})"
        if any(name == plugin or _normalise(dist or "") == f"claude-db-{name}"
               for plugin, dist in self.not_selected):
            return (f"engine {name!r} is installed but not loaded "
                    "(CLAUDE_DB_LOAD_PLUGINS / CLAUDE_DB_DISABLE_PLUGINS)")
        if failed := next((e for e in self.errors if e.plugin == name), None):
            return f"engine {name!r} failed to load: {failed.message}"
        if close := difflib.get_close_matches(name, names, n=1):
            return f"{unknown}; did you mean {close[0]!r}?"
        if f"claude-db-{name}" in FIRST_PARTY:
            return (f"{unknown}; to add it, install claude-db-{name} from the claude-db "
                    f"repository (it is not on PyPI yet): pip install ./plugins/{name}")
        return f"{unknown}; other engines are plugins: see claude-db plugins"

    def runtime_class(self, name: str) -> type[Runtime]:
        if name not in self.runtimes:
            raise UsageError(
                f"unknown runtime {name!r} (available: auto, {', '.join(self.runtimes.names())})"
            )
        return self.runtimes.get(name)

    def engine_for_scheme(self, scheme: str) -> Engine:
        for _, cls in self.engines.items():
            if scheme in cls.url_schemes:
                return cls()
        raise UnknownEngineError(f"no installed engine understands {scheme}:// URLs")

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            dist, version = self.distributions.get(name, (None, None))
            infos.append(PluginInfo(name, dist, version, hooks))
        return sorted(infos, key=lambda info: info.name)


class GuardedHooks:
    """Like pluggy's hook relay, but each plugin's implementation runs on its own.

    One that raises is reported (one ``warning:`` line on stderr naming the plugin and its
    distribution; fatal under ``CLAUDE_DB_STRICT_PLUGINS``) and the others still run, so a
    broken observer cannot break every session. Results are those of the implementations
    that returned something, in pluggy's order (last registered first).
    """

    def __init__(self, plugins: Plugins) -> None:
        self._plugins = plugins

    def __getattr__(self, name: str) -> Callable[..., list[Any]]:
        caller = getattr(self._plugins.pm.hook, name)
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            return caller  # type: ignore[no-any-return]  # wrappers need pluggy's own loop

        def call(**kwargs: Any) -> list[Any]:
            results = []
            for impl in reversed(impls):
                try:
                    result = impl.function(*(kwargs[arg] for arg in impl.argnames))
                except Exception as exc:
                    self._failed(impl.plugin_name, name, exc)
                    continue
                if result is not None:
                    results.append(result)
            return results

        return call

    def _failed(self, plugin: str, hook: str, exc: Exception) -> None:
        dist = self._plugins.distributions.get(plugin, (None, None))[0]
        where = f" (distribution {dist})" if dist else ""
        message = f"plugin {plugin!r}{where} failed in {hook}: {_describe(exc)}"
        if self._plugins.strict:
            raise PluginError(f"{message} (CLAUDE_DB_STRICT_PLUGINS is set)") from exc
        print(f"warning: {message}", file=sys.stderr)


def create_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(settings: Settings, *, discover: bool = True) -> Plugins:
    """Register core's plugins and (``discover``) every selected entry point, then fill
    the registries. ``discover=False`` gives core's built-ins alone (tests)."""
    from claude_db.engine import Engine
    from claude_db.runtime import Runtime

    plugins = Plugins(
        create_plugin_manager(), Registry[Engine]("engine"), Registry[Runtime]("runtime"),
        strict=settings.strict_plugins,
    )
    for module_name in DEFAULT_PLUGINS:
        plugins.pm.register(importlib.import_module(module_name), name=module_name)
        plugins.distributions[module_name] = ("claude-db", _version("claude-db"))
    if discover:
        installed = [Installed(ep, *_distribution(ep))
                     for ep in entry_points(group=ENTRY_POINT_GROUP)]
        for plugin in sorted(installed, key=_load_order):
            if _selected(plugin, settings):
                _load_entry_point(plugins, plugin, settings.strict_plugins)
            else:
                plugins.not_selected.append((plugin.ep.name, plugin.dist))
    fill_registries(plugins, settings.strict_plugins)
    return plugins


class Installed(NamedTuple):  # a NamedTuple: a dataclass takes ~0.4 ms more to create
    """An installed entry point with its distribution's name and version."""

    ep: EntryPoint
    dist: str | None
    version: str | None


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    """The name and version of the distribution giving ``ep``, from one read of its
    metadata (``ep.dist.name`` and ``.version`` each read and parse it again)."""
    if ep.dist is None:
        return None, None
    metadata = ep.dist.metadata
    return metadata["Name"], metadata["Version"]


def _load_order(plugin: Installed) -> tuple[bool, str, str]:
    """This project's distributions first, then the others by name: when two plugins claim
    one engine name, the first keeps it, whatever order the installer left files in."""
    dist = _normalise(plugin.dist or "")
    return (dist not in FIRST_PARTY, dist, plugin.ep.name)


def _selected(plugin: Installed, settings: Settings) -> bool:
    """The lists name entry points (``postgres``) or distributions (``claude-db-postgres``)."""
    names = {plugin.ep.name, _normalise(plugin.ep.name)}
    if plugin.dist is not None:
        names |= {plugin.dist, _normalise(plugin.dist)}
    if settings.load_plugins is not None and not names & _normalised(settings.load_plugins):
        return False
    return not names & _normalised(settings.disable_plugins)


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _normalised(names: Iterable[str]) -> set[str]:
    return {*names, *(_normalise(n) for n in names)}


def _load_entry_point(plugins: Plugins, plugin: Installed, strict: bool) -> None:
    ep, dist, version = plugin.ep, plugin.dist, plugin.version
    try:
        module = ep.load()
        if plugins.pm.has_plugin(ep.name):
            raise PluginError(f"a plugin named {ep.name!r} is already loaded")
        plugins.pm.register(module, name=ep.name)
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not end the CLI
        _report(plugins, LoadError(ep.name, dist, _describe(exc)), strict, exc)
        return
    try:
        plugins.pm.check_pending()  # a misspelled hook name surfaces here
    except pluggy.PluginValidationError as exc:
        plugins.pm.unregister(name=ep.name)
        _report(plugins, LoadError(ep.name, dist, _describe(exc)), strict, exc)
        return
    plugins.distributions[ep.name] = (dist, version)


def register_plugin(plugins: Plugins, plugin: object, name: str, strict: bool = True) -> None:
    """Register an in-process plugin object (tests, embedding) and add what it registers."""
    plugins.pm.register(plugin, name=name)
    try:
        plugins.pm.check_pending()
    except pluggy.PluginValidationError:
        plugins.pm.unregister(name=name)
        raise
    _call_register_hook(plugins, name, strict)


def unregister_plugin(plugins: Plugins, name: str) -> None:
    """Remove a plugin and every engine and runtime it registered."""
    if plugins.pm.has_plugin(name):
        plugins.pm.unregister(name=name)
    plugins.engines.remove_owner(name)
    plugins.runtimes.remove_owner(name)
    plugins.distributions.pop(name, None)


def add_commands(plugins: Plugins, app: typer.Typer, strict: bool) -> None:
    """Call each plugin's ``register_commands``: one that raises is reported and skipped
    whole (the commands it added are taken out again), so ``--help`` keeps working."""
    for impl in plugins.pm.hook.register_commands.get_hookimpls():
        commands, groups = list(app.registered_commands), list(app.registered_groups)
        try:
            impl.function(app=app)
        except Exception as exc:
            app.registered_commands[:], app.registered_groups[:] = commands, groups
            dist = plugins.distributions.get(impl.plugin_name, (None, None))[0]
            unregister_plugin(plugins, impl.plugin_name)
            _report(plugins, LoadError(impl.plugin_name, dist, _describe(exc)), strict, exc)


def fill_registries(plugins: Plugins, strict: bool) -> None:
    for name, plugin in plugins.pm.list_name_plugin():
        if plugin is not None:
            _call_register_hook(plugins, name, strict)


def _call_register_hook(plugins: Plugins, plugin_name: str, strict: bool) -> None:
    # Called per plugin (not through the hook relay) so every class is attributed to its
    # plugin and one plugin's failure cannot take the others down. A plugin that fails
    # here is skipped whole: what it registered and its other hooks are removed.
    for hook_name, registry in (
        ("register_runtimes", plugins.runtimes),
        ("register_engines", plugins.engines),
    ):
        caller = getattr(plugins.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            try:
                impl.function(register=functools.partial(_add, registry, owner=plugin_name))
            except Exception as exc:
                dist = plugins.distributions.get(plugin_name, (None, None))[0]
                unregister_plugin(plugins, plugin_name)
                _report(plugins, LoadError(plugin_name, dist, _describe(exc)), strict, exc)
                return


def _add(registry: Registry[Any], cls: type[Any], *, owner: str) -> None:
    registry.add(cls, owner)


def _report(plugins: Plugins, error: LoadError, strict: bool, exc: BaseException) -> None:
    if strict:
        raise PluginError(error.fatal()) from exc
    plugins.errors.append(error)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
