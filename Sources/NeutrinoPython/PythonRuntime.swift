import CPython
import Glibc
import NeutrinoCore

/// A Python object pointer that is only ever touched while holding the GIL.
struct PyRef: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<PyObject>
}

/// Why the interpreter could not start or the app could not be loaded, with Python's traceback when there is one.
public struct PythonStartupError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// The embedded CPython interpreter with the user's app imported through `neutrino._runtime`.
///
/// One per process: `Py_InitializeEx(0)` (Python installs no signal handlers; the Swift process owns SIGINT and
/// SIGTERM), `sys.path` set up, the app loaded, then the GIL released with `PyEval_SaveThread`. From then on every
/// Python call goes through a `PythonExecutor` thread.
public final class PythonRuntime: Sendable {
    /// The tasks the app defines, as its `App` reports them.
    public let tasks: [TaskSpec]
    let invoke: PyRef
    let taskErrorClass: PyRef
    let taskNames: [String: PyRef]
    /// `neutrino._runtime.CancelledByRequest`, injected into a task's thread to cancel it.
    let cancelClass: PyRef
    /// `neutrino._runtime.last_output`: what the last task on the calling thread printed (bytes or None).
    let lastOutput: PyRef?
    /// The `async def` tasks: they run on the worker's event loop (`neutrino._loop`), not on a thread each.
    public let coroutineTasks: Set<String>
    /// `neutrino._loop.run`, the event-loop thread's body; nil when the app has no `async def` task and mounts no
    /// ASGI app.
    let loopRun: PyRef?
    /// The sync pool whose HTTP workers serve the app's mounted ASGI app (`App.mount`), or nil.
    public let asgiPool: String?

    /// Starts the interpreter and imports `app` (a `.py` path, `module` or `module:attr`).
    /// `paths` go first on `sys.path` (the SDK, extra folders); an active virtualenv (`VIRTUAL_ENV`) is added as a
    /// site dir ahead of the system's packages. Call once per process, before any executor starts.
    public static func start(app: String, paths: [String]) throws -> PythonRuntime {
        guard Py_IsInitialized() == 0 else { throw PythonStartupError(message: "the Python interpreter is already running") }
        // Signals a task could raise at its own process and whose default action ends it: ignored, so
        // `signal.alarm(1)` or `setitimer` in a task cannot take the worker (and every other task on it) down.
        // (`signal.signal` from a task's thread already fails: Python allows handlers only on the main thread.)
        for sig in [SIGALRM, SIGVTALRM, SIGPROF, SIGUSR1, SIGUSR2, SIGPIPE, SIGHUP] { signal(sig, SIG_IGN) }
        Py_InitializeEx(0)
        defer { _ = PyEval_SaveThread() }  // from here on the GIL is taken per call, on executor threads
        // The app's own folder is put on sys.path by the loader; a `module` app is looked up from the cwd.
        var literal = JSONWriter()
        literal.beginArray()
        for p in paths + ["."] { literal.string(p) }
        literal.endArray()
        let bootstrap = """
            import os, site, sys
            sys.argv = ["neutrino-worker"]
            _venv = os.environ.get("VIRTUAL_ENV")
            _venv_version = None
            if _venv:
                try:
                    with open(os.path.join(_venv, "pyvenv.cfg")) as _cfg:
                        for _line in _cfg:
                            _k, _, _v = _line.partition("=")
                            if _k.strip() in ("version", "version_info") and _v.strip():
                                _venv_version = tuple(int(x) for x in _v.strip().split(".")[:2])
                except (OSError, ValueError):
                    pass
            if _venv and _venv_version is not None and _venv_version != sys.version_info[:2]:
                sys._neutrino_startup_error = (
                    "the virtualenv %s (VIRTUAL_ENV) is Python %d.%d, but this worker embeds Python %d.%d "
                    "(libpython%d.%d), which cannot load its packages. Make the venv with Python %d.%d, e.g. "
                    "`python%d.%d -m venv DIR` (Debian 12: /usr/bin/python3 -m venv DIR, from the python3-venv package) or "
                    "`uv venv --python %d.%d DIR`, and install your app's requirements into it."
                    % ((_venv,) + _venv_version + tuple(sys.version_info[:2]) * 5))
            elif _venv:
                _before = list(sys.path)
                site.addsitedir(os.path.join(_venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
                sys.path[:] = [p for p in sys.path if p not in _before] + _before
            for _p in reversed([os.path.abspath(p) for p in \(literal.text)]):
                if _p in sys.path:
                    sys.path.remove(_p)
                sys.path.insert(0, _p)
            del _p
            """
        guard PyRun_SimpleStringFlags(bootstrap, nil) == 0 else {
            throw PythonStartupError(message: "setting up sys.path failed (see the Python error above)")
        }
        if let sys = PyImport_ImportModule("sys") {
            defer { Py_DecRef(sys) }
            if let refusal = PyObject_GetAttrString(sys, "_neutrino_startup_error") {
                defer { Py_DecRef(refusal) }
                throw PythonStartupError(message: PythonRuntime.string(of: refusal))
            }
            PyErr_Clear()
        }
        guard let module = PyImport_ImportModule("neutrino._runtime") else {
            throw PythonStartupError(message: "cannot import neutrino._runtime (is the SDK on --python-path?): \(PythonRuntime.takeErrorText())")
        }
        defer { Py_DecRef(module) }
        guard let load = PyObject_GetAttrString(module, "load"),
            let invoke = PyObject_GetAttrString(module, "invoke"),
            let taskError = PyObject_GetAttrString(module, "TaskError"),
            let cancelled = PyObject_GetAttrString(module, "CancelledByRequest")
        else {
            throw PythonStartupError(message: "neutrino._runtime lacks load/invoke/TaskError/CancelledByRequest: \(PythonRuntime.takeErrorText())")
        }
        defer { Py_DecRef(load) }
        let lastOutput = PyObject_GetAttrString(module, "last_output")
        if lastOutput == nil { PyErr_Clear() }  // an SDK without output capture: nothing is captured
        // Hand neutrino.report_progress its way out to Swift.
        if let setSink = PyObject_GetAttrString(module, "set_progress_sink"), let sink = ProgressReporting.makeSinkFunction(),
            let sinkArgs = PyTuple_New(1)
        {
            PyTuple_SetItem(sinkArgs, 0, sink)  // steals sink
            if let r = PyObject_CallObject(setSink, sinkArgs) { Py_DecRef(r) } else { PyErr_Clear() }
            Py_DecRef(sinkArgs)
            Py_DecRef(setSink)
        } else {
            PyErr_Clear()
        }
        guard let appArg = PyUnicode_FromString(app), let args = PyTuple_New(1) else {
            throw PythonStartupError(message: "out of memory")
        }
        PyTuple_SetItem(args, 0, appArg)  // steals appArg
        defer { Py_DecRef(args) }
        guard let loaded = PyObject_CallObject(load, args) else {
            throw PythonStartupError(message: "loading the app \(app) failed:\n\(PythonRuntime.takeErrorText())")
        }
        defer { Py_DecRef(loaded) }
        guard let bytes = PythonRuntime.bytes(of: loaded) else {
            throw PythonStartupError(message: "neutrino._runtime.load did not return bytes")
        }
        guard let specs = PythonRuntime.decodeSpecs(bytes) else {
            throw PythonStartupError(message: "neutrino._runtime.load returned unreadable task specs: \(String(decoding: bytes, as: UTF8.self))")
        }
        let coroutines = PythonRuntime.decodeCoroutineNames(bytes)
        var asgiPool: String?
        if let poolFunction = PyObject_GetAttrString(module, "asgi_pool") {
            if let pool = PyObject_CallObject(poolFunction, nil) {
                if pool != neutrino_py_none() { asgiPool = PythonRuntime.string(of: pool) }
                Py_DecRef(pool)
            }
            Py_DecRef(poolFunction)
        }
        PyErr_Clear()  // an SDK without asgi_pool: no mounted app
        var loopRun: PyRef?
        if !coroutines.isEmpty || asgiPool != nil {
            guard let loopModule = PyImport_ImportModule("neutrino._loop"), let run = PyObject_GetAttrString(loopModule, "run") else {
                throw PythonStartupError(message: "cannot import neutrino._loop for the app's async def tasks: \(PythonRuntime.takeErrorText())")
            }
            Py_DecRef(loopModule)
            loopRun = PyRef(pointer: run)
        }
        var names: [String: PyRef] = [:]
        for spec in specs {
            guard let name = PyUnicode_FromString(spec.name) else { throw PythonStartupError(message: "out of memory") }
            names[spec.name] = PyRef(pointer: name)
        }
        return PythonRuntime(
            tasks: specs, invoke: PyRef(pointer: invoke), taskErrorClass: PyRef(pointer: taskError),
            taskNames: names, cancelClass: PyRef(pointer: cancelled), lastOutput: lastOutput.map { PyRef(pointer: $0) },
            coroutineTasks: coroutines, loopRun: loopRun, asgiPool: asgiPool)
    }

    private init(
        tasks: [TaskSpec], invoke: PyRef, taskErrorClass: PyRef, taskNames: [String: PyRef], cancelClass: PyRef,
        lastOutput: PyRef?, coroutineTasks: Set<String>, loopRun: PyRef?, asgiPool: String?
    ) {
        self.asgiPool = asgiPool
        self.coroutineTasks = coroutineTasks
        self.loopRun = loopRun
        self.lastOutput = lastOutput
        self.tasks = tasks
        self.invoke = invoke
        self.taskErrorClass = taskErrorClass
        self.taskNames = taskNames
        self.cancelClass = cancelClass
    }

    /// What the last task on this thread printed, as `last_output` returns it (GIL held).
    func takeOutput() -> [UInt8]? {
        guard let lastOutput, let value = PyObject_CallObject(lastOutput.pointer, nil) else {
            PyErr_Clear()
            return nil
        }
        defer { Py_DecRef(value) }
        return PythonRuntime.bytes(of: value)
    }

    /// `[{"name","execution_mode","pool","timeout_ms","retries"}]` as `load` returns it.
    static func decodeSpecs(_ bytes: [UInt8]) -> [TaskSpec]? {
        guard let items = (try? JSONParser.parse(bytes))?.arrayValue else { return nil }
        var specs: [TaskSpec] = []
        for item in items {
            guard let name = item["name"]?.stringValue,
                let mode = item["execution_mode"]?.stringValue.flatMap(ExecutionMode.init(rawValue:)),
                let pool = item["pool"]?.stringValue,
                let timeout = item["timeout_ms"]?.intValue
            else { return nil }
            specs.append(TaskSpec(name: name, mode: mode, pool: pool, timeoutMs: timeout, retries: item["retries"]?.intValue ?? 0))
        }
        return specs
    }

    /// The names of the specs marked `"coroutine": true` (`async def` tasks).
    static func decodeCoroutineNames(_ bytes: [UInt8]) -> Set<String> {
        guard let items = (try? JSONParser.parse(bytes))?.arrayValue else { return [] }
        return Set(items.compactMap { $0["coroutine"] == .bool(true) ? $0["name"]?.stringValue : nil })
    }

    /// The content of a `bytes` object (GIL held).
    static func bytes(of object: UnsafeMutablePointer<PyObject>) -> [UInt8]? {
        var buffer: UnsafeMutablePointer<CChar>?
        var length: Py_ssize_t = 0
        guard PyBytes_AsStringAndSize(object, &buffer, &length) == 0, let buffer else {
            PyErr_Clear()
            return nil
        }
        return buffer.withMemoryRebound(to: UInt8.self, capacity: Int(length)) { Array(UnsafeBufferPointer(start: $0, count: Int(length))) }
    }

    /// `str(object)` (GIL held).
    static func string(of object: UnsafeMutablePointer<PyObject>?) -> String {
        guard let object, let s = PyObject_Str(object) else { PyErr_Clear(); return "" }
        defer { Py_DecRef(s) }
        guard let utf8 = PyUnicode_AsUTF8(s) else { PyErr_Clear(); return "" }
        return String(cString: utf8)
    }

    /// The pending Python exception as `Type: message` plus its traceback, and clears it (GIL held).
    static func takeErrorText() -> String {
        let (type, value, traceback) = fetchError()
        defer { [type, value, traceback].forEach { Py_DecRef($0) } }
        return formatException(type: type, value: value, traceback: traceback)
    }

    static func fetchError() -> (UnsafeMutablePointer<PyObject>?, UnsafeMutablePointer<PyObject>?, UnsafeMutablePointer<PyObject>?) {
        var type: UnsafeMutablePointer<PyObject>?
        var value: UnsafeMutablePointer<PyObject>?
        var traceback: UnsafeMutablePointer<PyObject>?
        PyErr_Fetch(&type, &value, &traceback)
        PyErr_NormalizeException(&type, &value, &traceback)
        if let traceback, let value { PyException_SetTraceback(value, traceback) }
        return (type, value, traceback)
    }

    /// `traceback.format_exception(type, value, tb)` joined, or `Type: message` if formatting fails (GIL held).
    static func formatException(
        type: UnsafeMutablePointer<PyObject>?, value: UnsafeMutablePointer<PyObject>?,
        traceback: UnsafeMutablePointer<PyObject>?
    ) -> String {
        let fallback = "\(typeName(type)): \(string(of: value))"
        guard let type, let value, let module = PyImport_ImportModule("traceback") else { PyErr_Clear(); return fallback }
        defer { Py_DecRef(module) }
        guard let format = PyObject_GetAttrString(module, "format_exception"), let args = PyTuple_New(3) else { PyErr_Clear(); return fallback }
        defer { Py_DecRef(format); Py_DecRef(args) }
        Py_IncRef(type); PyTuple_SetItem(args, 0, type)
        Py_IncRef(value); PyTuple_SetItem(args, 1, value)
        let tb = traceback ?? neutrino_py_none()
        Py_IncRef(tb); PyTuple_SetItem(args, 2, tb)
        guard let lines = PyObject_CallObject(format, args), let empty = PyUnicode_FromString("") else { PyErr_Clear(); return fallback }
        defer { Py_DecRef(lines); Py_DecRef(empty) }
        guard let joined = PyUnicode_Join(empty, lines) else { PyErr_Clear(); return fallback }
        defer { Py_DecRef(joined) }
        return PyUnicode_AsUTF8(joined).map { String(cString: $0) } ?? fallback
    }

    static func typeName(_ type: UnsafeMutablePointer<PyObject>?) -> String {
        guard let type, let name = PyObject_GetAttrString(type, "__name__") else { PyErr_Clear(); return "Exception" }
        defer { Py_DecRef(name) }
        return string(of: name)
    }
}

extension PythonRuntime {
    /// Runs `body` with the GIL let go when the calling thread holds it (a Python thread answering a call from inside
    /// the executor), so a wait in `body` (a socket that is not writable yet) never stops the other Python threads.
    public static func withoutGIL<T>(_ body: () -> T) -> T {
        guard PyGILState_Check() == 1, let state = PyEval_SaveThread() else { return body() }
        defer { PyEval_RestoreThread(state) }
        return body()
    }
}
