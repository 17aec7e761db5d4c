"""Config -> the engine's jails, their sources and the protections, and the table's layout:
what `[jail]` or `[jails.NAME]`, `[engine]` and `[ratelimit.NAME]` ask for, checked (unknown
source names, filter files that do not load) with the key named, as ConfigError."""

from __future__ import annotations

from pathlib import Path

import structlog

from bansink.actions.layout import JailScope, Layout
from bansink.engine.addresses import NetworkSet
from bansink.engine.filters.filter import FilterError
from bansink.engine.jail import JailSettings
from bansink.engine.pipeline import JailSpec, Protections, SecurityPipeline
from bansink.engine.sources import Source, builtin_sources, filter_source

from .config import Config, ConfigError, JailConfig

log = structlog.get_logger("bansink")

LEGACY_JAIL = "roundcube"
"""The name of `[jail]`, the single jail of older configs."""


def settings_of(name: str, jail: JailConfig, config: Config) -> JailSettings:
    return JailSettings(name, jail.maxretry, jail.findtime, jail.bantime,
                        config.engine.max_tracked, jail.escalation, jail.ipv6_prefix, jail.prefix)


def jails_and_sources(config: Config) -> tuple[list[JailSpec], dict[str, Source]]:
    """The enabled jails and every source they name (built-in ones by name, filters by their
    spec); ConfigError naming the key when a source is unknown or a filter cannot be used."""
    known = builtin_sources()
    if not config.jails:
        jc = config.jail
        return [JailSpec(settings_of(LEGACY_JAIL, jc, config),
                         ("roundcube-security_log",))], \
            dict(known)
    folders = [Path(folder) for folder in config.engine.filter_paths]
    sources: dict[str, Source] = {}
    specs: list[JailSpec] = []
    problems: list[str] = []
    for name, jail in config.jails.items():
        if not jail.enabled:
            continue
        tags = frozenset(jail.tags) if jail.tags is not None else None
        names: list[str] = []
        for source in jail.sources:
            if source not in known:
                problems.append(f"jails.{name}.sources: unknown source {source!r} (built in: "
                                f"{', '.join(sorted(known))})")
                continue
            sources[source] = known[source]
            names.append(source)
        for spec in jail.filters:
            key = f"filter:{spec}" if jail.line is None else f"filter:{spec}:{jail.line}"
            if key not in sources:
                try:
                    loaded = filter_source(spec, folders, line=jail.line)
                except FilterError as exc:
                    problems.append(f"jails.{name}.filters: {exc}")
                    continue
                for note in loaded.filter.notes:
                    log.warning("filter_note", jail=name, note=note)
                sources[key] = loaded
            names.append(key)
        if names:
            specs.append(JailSpec(
                settings_of(name, jail, config),
                tuple(dict.fromkeys(names)), tags,
                NetworkSet(jail.ignoreip) if jail.ignoreip else None))
    if problems:
        raise ConfigError("\n".join(problems))
    return specs, sources


def protections_of(config: Config) -> Protections:
    return Protections(
        trusted_proxies=NetworkSet(config.engine.trusted_proxies),
        ignoreip=NetworkSet(config.engine.ignoreip),
        senders=NetworkSet(config.receiver.senders),
    )


def layout_of(config: Config) -> Layout:
    """What bansink's table holds for this config: a set pair per enabled jail with its ports
    (or the shared pair of an old `[jail]` config) and the rate limits, which spare every
    ignoreip (global and per jail), sender and trusted proxy."""
    ports = config.nftables.ports
    enabled = {name: jail for name, jail in config.jails.items() if jail.enabled}
    exempt = [*config.engine.ignoreip, *config.receiver.senders, *config.engine.trusted_proxies]
    for jail in enabled.values():
        exempt += jail.ignoreip
    return Layout(
        jails=tuple(JailScope(name, jail.ports if jail.ports is not None else ports)
                    for name, jail in enabled.items()),
        ports=ports, ratelimits=tuple(config.rate_limits), exempt=tuple(dict.fromkeys(exempt)))


def build_pipeline(config: Config) -> SecurityPipeline:
    jails, sources = jails_and_sources(config)
    return SecurityPipeline(jails, protections_of(config), sources=sources)


def reconfigure(pipeline: SecurityPipeline, config: Config) -> None:
    """A reload: the pipeline follows the new jails and sources, keeping its counts."""
    jails, sources = jails_and_sources(config)
    pipeline.reconfigure(jails, protections_of(config), sources=sources)
