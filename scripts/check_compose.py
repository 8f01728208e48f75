#!/usr/bin/env python3
"""Checks docker/compose.yaml without a Docker engine: it parses; every service it depends on
exists; every local path it names (build context, Dockerfile, bind mounts, the configuration
files its commands name) exists; the Dockerfile's COPY sources exist; the gateway image
runs as a non-root user with no keys copied in, has a HEALTHCHECK on /readyz and a volume for
what it writes; and every gateway container mounts its configuration read-only while every
path its configuration writes (audit.checkpoint_file, store.sqlite) lies on a writable volume
of that container. Exits 1 naming each problem."""
import pathlib
import re
import sys
import tomllib

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
compose_path = root / "docker" / "compose.yaml"
problems = []

try:
    compose = yaml.safe_load(compose_path.read_text())
except yaml.YAMLError as e:
    print(f"{compose_path}: does not parse: {e}")
    sys.exit(1)

base = compose_path.parent
services = compose.get("services") or {}
volumes = set((compose.get("volumes") or {}).keys())
if not services:
    problems.append("no services")

for name, svc in services.items():
    build = svc.get("build")
    if build:
        context = base / build.get("context", ".")
        if not context.is_dir():
            problems.append(f"{name}: build context {context} is missing")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"{name}: Dockerfile {dockerfile} is missing")
    deps = svc.get("depends_on") or []
    for dep in deps if isinstance(deps, list) else deps.keys():
        if dep not in services:
            problems.append(f"{name}: depends on unknown service {dep}")
    for mount in svc.get("volumes") or []:
        source = mount.split(":")[0]
        if source.startswith(("./", "../", "/")):
            if not (base / source).exists():
                problems.append(f"{name}: mounted path {source} is missing")
        elif source not in volumes:
            problems.append(f"{name}: named volume {source} is not declared")
    command = svc.get("command") or []
    words = command if isinstance(command, list) else [command]
    for word in words:
        for cfg in re.findall(r"/etc/gateway/config/([\w.-]+\.toml)", str(word)):
            if not (base / "config" / cfg).is_file():
                problems.append(f"{name}: configuration {cfg} is not in docker/config")
    if svc.get("image", "").startswith("regional-federation-gateway") and not any(
        s.get("build") for s in services.values()
    ):
        problems.append(f"{name}: the gateway image is never built")

# Secrets: each one a service names is declared, and a file-backed one exists.
declared = compose.get("secrets") or {}
for name, secret in declared.items():
    if "file" in secret and not (base / secret["file"]).is_file():
        problems.append(f"secret {name}: file {secret['file']} is missing")
for name, svc in services.items():
    for secret in svc.get("secrets") or []:
        ref = secret if isinstance(secret, str) else secret.get("source")
        if ref not in declared:
            problems.append(f"{name}: secret {ref} is not declared")
    env = svc.get("environment") or {}
    for key, value in (env.items() if isinstance(env, dict) else []):
        if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
            wanted = str(value).removeprefix("/run/secrets/")
            if wanted not in (svc.get("secrets") or []):
                problems.append(f"{name}: {key} names secret {wanted}, which it is not given")

# No password is written into a gateway configuration: it comes from a secret.
for cfg in (base / "config").glob("*.toml"):
    conninfo = tomllib.loads(cfg.read_text()).get("store", {}).get("postgres", "")
    if "password" in conninfo:
        problems.append(f"{cfg.name}: store.postgres carries a password; use GATEWAY_STORE__POSTGRES_PASSWORD_FILE")


def mounts(svc):
    """(source, target, read_only) of each of a service's volumes."""
    out = []
    for mount in svc.get("volumes") or []:
        parts = mount.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def written_paths(config_file):
    """The absolute paths a gateway configuration writes, as the container sees them."""
    config = tomllib.loads(config_file.read_text())
    here = pathlib.PurePosixPath("/etc/gateway/config")
    paths = []
    store = config.get("store", {})
    audit = config.get("audit", {})
    if "sqlite" in store or "postgres" not in store:
        code = config["region"]["code"]
        paths.append(("store.sqlite", store.get("sqlite", f"{code}.sqlite")))
    code = config["region"]["code"]
    paths.append(("audit.checkpoint_file", audit.get("checkpoint_file", f"{code}.checkpoints.jsonl")))
    resolved = []
    for key, p in paths:
        p = pathlib.PurePosixPath(p)
        resolved.append((key, p if p.is_absolute() else here / p))
    return resolved


for name, svc in services.items():
    if not svc.get("image", "").startswith("regional-federation-gateway") or svc.get("build"):
        continue
    command = svc.get("command") or []
    configs = re.findall(r"/etc/gateway/config/([\w.-]+\.toml)", " ".join(map(str, command)))
    if not configs:
        continue
    ms = mounts(svc)
    for source, target, ro in ms:
        if target == "/etc/gateway/config" and not ro:
            problems.append(f"{name}: the configuration must be mounted read-only")
    for cfg in configs:
        path = base / "config" / cfg
        if not path.is_file():
            continue
        for key, written in written_paths(path):
            on = [
                (target, ro)
                for _, target, ro in ms
                if written.is_relative_to(pathlib.PurePosixPath(target))
            ]
            # The deepest mount holding the path decides.
            on.sort(key=lambda m: len(m[0]))
            if not on or on[-1][1]:
                problems.append(
                    f"{name}: {cfg} {key} = {written} is not on a writable volume"
                )

dockerfile = (base / "Dockerfile").read_text()
if not re.search(r"^HEALTHCHECK .*\n?.*/readyz", dockerfile, re.M):
    problems.append("Dockerfile: the runtime stage needs a HEALTHCHECK on /readyz")
if not re.search(r"^VOLUME /var/lib/gateway", dockerfile, re.M):
    problems.append("Dockerfile: what the gateway writes needs a VOLUME (/var/lib/gateway)")
for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
    for part in src.split():
        if not (root / part).exists():
            problems.append(f"Dockerfile: COPY source {part} is missing")
if not re.search(r"^USER (?!0\b|root\b)\S+", dockerfile, re.M):
    problems.append("Dockerfile: the runtime stage must run as a non-root USER")
if re.search(r"COPY .*\.(key|pem|jwt)\b", dockerfile):
    problems.append("Dockerfile: keys, certificates or tokens must not be baked into the image")

for p in problems:
    print(f"compose check: {p}")
if problems:
    sys.exit(1)
print(f"compose check: {len(services)} services, every path present")
