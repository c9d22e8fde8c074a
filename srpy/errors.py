"""
The exceptions srpy raises.

Every error srpy raises itself derives from L{SRPyError}, so C{except SRPyError} catches them all.
Exceptions raised by user code on an engine come back as the same builtin type where one exists,
with the engine's traceback text in their C{remote_traceback} attribute; others come back as
L{RemoteError}, which names the remote type.
"""

from typing import Optional


class SRPyError(Exception):
    """Base class of every error raised by srpy itself."""


class SRPyServerNotFound(SRPyError):
    """
    Nothing answered at an engine's URI within the connect timeout.

    @ivar uri: the URI that was tried.
    """

    def __init__(self, uri: str, reason: str = "") -> None:
        self.uri = str(uri)
        self.reason = reason
        text = "no srpy engine answers at %s" % self.uri
        super().__init__(text + (": " + reason if reason else ""))


class CommunicationError(SRPyError):
    """The connection to an engine failed or was lost during a call."""


class ConnectionLost(CommunicationError):
    """The engine closed the connection (or died) while a call was under way."""


class ProtocolError(CommunicationError):
    """The peer sent something that is not a valid Pyro5 message for srpy."""


class CallTimeout(CommunicationError, TimeoutError):
    """A call did not complete within its timeout."""


class MessageTooLargeError(SRPyError, ValueError):
    """
    A call's message (or the raw bytes sent with it) is larger than the engine accepts
    (C{srpyapp --max-message-size}); the message names both sizes. The engine dropped the call and
    answered it: the connection, and the engine, go on.
    """


class AuthenticationError(SRPyError):
    """The secret handshake failed: no secret, a wrong secret, or an engine that could not prove itself."""


class SerializationError(SRPyError, TypeError):
    """A value cannot travel over the wire; the message names its type and what to do instead."""


class RecordModuleNotImported(SRPyError, ValueError):
    """
    A received record's class is of a module the receiving side has not imported (srpy never
    imports one because of a message; see L{srpy.records}). An engine answers a call with it; the
    client then sends the class again and repeats the call once (the engine had restarted).
    The message itself was whole: a connection that received one stays usable.
    """

    #: the message was read whole and well-formed: only this value cannot be rebuilt here
    message_intact = True
    #: C{'module:qualname'} of the class that could not be resolved (None if not known)
    reference: Optional[str] = None


class RemoteError(SRPyError):
    """
    An exception of a type that has no local equivalent, raised by code on an engine.

    @ivar remote_type: the dotted name of the remote exception's type.
    @ivar remote_traceback: the traceback text from the engine.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: Optional[str] = None) -> None:
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        super().__init__("%s: %s" % (remote_type, message))


class RemoteSystemExit(SystemExit):
    """
    Code on an engine called C{sys.exit()}. The engine keeps serving; the caller gets this
    C{SystemExit} subclass, whose message says where it came from (so an uncaught one is not silent).

    @ivar remote_code: the exit code the remote code asked for.
    """

    def __init__(self, remote_code: object = None, remote_traceback: Optional[str] = None) -> None:
        self.remote_code = remote_code
        self.remote_traceback = remote_traceback
        super().__init__("code on the engine called sys.exit(%r)" % (remote_code,))


class EngineDead(SRPyError):
    """An engine stopped answering; its unfinished work could not be completed on it."""


class NoEnginesError(SRPyError):
    """Work was asked of a box that has no live engine left."""


class UnknownFunction(SRPyError, KeyError):
    """An engine was asked to run a shipped function it has not been sent (it restarted?)."""


class MissingPackagesError(SRPyError, ImportError):
    """
    Engines lack packages a function needs.

    @ivar missing: C{{engine description: [package, ...]}}.
    """

    def __init__(self, missing: dict) -> None:
        self.missing = missing
        text = "; ".join("%s lacks %s" % (engine, ", ".join(names)) for engine, names in missing.items())
        super().__init__("packages missing on engines: %s. Install them in the engines' Python, or host "
                         "engines with one that has them (srpyapp --python PATH)" % text)


class PeerUnavailable(CommunicationError):
    """A peer engine did not answer (it died, or left the group): the message or call did not reach it."""


class NotInEngine(SRPyError):
    """Engine-side API (C{srpy.this_engine()}, C{srpy.spawn}) called outside an engine process."""


class TaskTimeout(SRPyError, TimeoutError):
    """
    A call ran longer than its time limit, and the engine stopped it: by interrupting the code
    where it could, by ending and restarting its process (on the same URI) where the code held
    the interpreter.
    """


class TaskAborted(SRPyError):
    """
    A call was stopped on request (C{EngBox.abort}, C{abort_all}, or a map abandoned by its
    caller), by the same mechanism as a time limit.
    """


class CallInterrupted(BaseException):
    """
    Internal: raised inside a running call's thread on the engine to stop its code (a time limit
    or an abort). A BaseException, so that user code's C{except Exception} does not swallow it;
    srpy turns it into L{TaskTimeout} or L{TaskAborted} at the call's boundary. Never raised on
    the client.
    """


class IncompatiblePyro5Error(SRPyError):
    """
    The installed Pyro5 changed one of the internals srpy relies on (C{srpy._pyro5}'s table); the
    message names each one and how it changed, and the Pyro5 versions srpy was checked against.
    """


class AnalysisError(SRPyError, ValueError):
    """
    What a job needs cannot be found out (C{srpy.analyze}): one of its source files does not parse
    (the message names the file and the line), or the module it names cannot be found or has no
    Python source to read.
    """


class InvalidRequirement(SRPyError, ValueError):
    """
    A requirement given to C{EngBox.require} (or C{EngBox(requirements=...)}) is not a valid
    requirement string (PEP 508, as pip reads them: C{"numpy>=2"}, C{"pkg[extra]==1.0"}); raised
    on the client before anything is sent to an engine. The message names the string and what is wrong.
    """


class InstallError(SRPyError):
    """
    Building an environment on an engine's host failed: the installer (uv or pip) could not
    install the requirements. Nothing half-made is left behind: the environment's temporary folder
    is removed. When several engines failed, one error names each.

    @ivar engine: the engine that failed (its name and URI), or the engines, comma-separated.
    @ivar requirements: the requirements it was installing.
    @ivar output: the installer's last lines of output.
    @ivar failures: C{{uri: InstallError}} when several engines failed, else empty.
    """

    def __init__(self, message: str, engine: str = "", requirements: Optional[list] = None, output: str = "",
                 failures: Optional[dict] = None) -> None:
        self.engine = engine
        self.requirements = list(requirements or [])
        self.output = output
        self.failures = dict(failures or {})
        super().__init__(message)


class EnvironmentConflict(SRPyError):
    """
    An engine was asked to activate an environment whose packages conflict with modules it has
    already imported (from its own Python or from the environment it had active): a process
    cannot hold two versions of one module. The message names the modules and both versions; use
    another engine for the other requirement set (one engine per set), or restart this one.
    """


class ClusterHostError(SRPyError):
    """
    A host of an L{SSHCluster<srpy.cluster.SSHCluster>} could not start engines: it cannot be
    reached, has no python3, or its launcher failed. One line, naming the host and why.
    """


class CellError(SRPyError):
    """
    Code that the notebook magics ran on several engines (C{%px}, C{%%px}, C{%pull},
    C{%pxresult}; see L{srpy.magics}) failed on some of them. Each engine's traceback was shown
    under its name with the others' output; this error says where it failed, so that the cell
    counts as failed (a notebook's "run all" stops at it).

    @ivar errors: C{{engine label: the exception it raised}}, a label being C{index:name}.
    """

    def __init__(self, what: str, errors: dict, engines: int) -> None:
        self.errors = dict(errors)
        named = ", ".join("%s (%s)" % (label, _one_line(exc)) for label, exc in self.errors.items())
        super().__init__("%s failed on %d of %d engine%s: %s" % (what, len(self.errors), engines,
                                                                  "" if engines == 1 else "s", named))

    def _render_traceback_(self) -> list:
        """What IPython shows for it: its message alone (the engines' tracebacks are shown already)."""
        return ["%s: %s" % (type(self).__name__, self)]


class CellInterrupted(KeyboardInterrupt):
    """
    Ctrl-C while the notebook magics waited for a cell on engines: the cell was aborted on
    every engine still running it, what they printed was shown, and this is raised (a
    C{KeyboardInterrupt}, so that whatever runs the cell stops as Ctrl-C stops it).
    """

    def _render_traceback_(self) -> list:
        """What IPython shows for it: its message alone, not the magic's frames that waited."""
        return ["KeyboardInterrupt: %s" % self]


def _one_line(exc: BaseException) -> str:
    """C{Type: message}, cut to one short line."""
    text = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    text = text.splitlines()[0] if text.strip() else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."
