import CPython
import Synchronization

/// The built-in function `neutrino._loop.run` calls to talk to the executor (GIL held, on the loop thread or its
/// watcher): `bridge(0)` takes the queued work, `bridge(1, id, ok, data, output)` reports a coroutine's end,
/// `bridge(2, reason)` reports the loop lost, `bridge(3)` raises `TimeoutError` in the loop thread; for the mounted
/// ASGI app (`neutrino._asgi`): `bridge(4, id, status, headers, route)` a response head, `bridge(5, id, data, more)`
/// a body chunk (returns True: wait for RESUME), `bridge(6, id, error)` the request's end, `bridge(7, phase, ok,
/// message)` the lifespan startup (0) or shutdown (1).
enum LoopBridge {
    private static let target = Mutex<PythonExecutor?>(nil)

    /// The executor whose loop this process runs (one per process).
    static func install(_ executor: PythonExecutor) {
        target.withLock { $0 = executor }
    }

    static var executor: PythonExecutor? { target.withLock { $0 } }

    /// `PyMethodDef` for the bridge; allocated once and never freed, as CPython requires.
    nonisolated(unsafe) static let methodDef: UnsafeMutablePointer<PyMethodDef> = {
        let def = UnsafeMutablePointer<PyMethodDef>.allocate(capacity: 2)
        def.initialize(
            to: PyMethodDef(
                ml_name: UnsafePointer(strdup("neutrino_loop_bridge")),
                ml_meth: loopBridge, ml_flags: METH_VARARGS, ml_doc: nil))
        (def + 1).initialize(to: PyMethodDef(ml_name: nil, ml_meth: nil, ml_flags: 0, ml_doc: nil))
        return def
    }()

    static func makeFunction() -> UnsafeMutablePointer<PyObject>? {
        PyCMethod_New(methodDef, nil, nil, nil)
    }
}

private func noneResult() -> UnsafeMutablePointer<PyObject>? {
    let none = neutrino_py_none()
    Py_IncRef(none)
    return none
}

private let loopBridge: PyCFunction = { _, args in
    guard let args, PyTuple_Size(args) >= 1, let opObject = PyTuple_GetItem(args, 0), let executor = LoopBridge.executor else {
        PyErr_Clear()
        return noneResult()
    }
    let op = PyLong_AsLong(opObject)
    switch op {
    case 0:
        return executor.takeForLoop() ?? noneResult()
    case 1:
        guard PyTuple_Size(args) == 5, let idObject = PyTuple_GetItem(args, 1), let okObject = PyTuple_GetItem(args, 2),
            let dataObject = PyTuple_GetItem(args, 3), let outputObject = PyTuple_GetItem(args, 4)
        else { break }
        let id = PyLong_AsUnsignedLongLong(idObject)
        let ok = PyObject_IsTrue(okObject) == 1
        let data = PythonRuntime.bytes(of: dataObject) ?? []
        let output = outputObject == neutrino_py_none() ? nil : PythonRuntime.bytes(of: outputObject)
        if PyErr_Occurred() != nil { PyErr_Clear() }
        executor.coroutineDone(id: UInt64(id), ok: ok, data: data, output: output)
    case 2:
        let reason = PyTuple_Size(args) > 1 ? PythonRuntime.string(of: PyTuple_GetItem(args, 1)) : "the event loop is blocked"
        executor.loopLost(reason)
    case 3:
        executor.interruptLoopThread()
    case 4:
        guard PyTuple_Size(args) == 5, let id = PyTuple_GetItem(args, 1), let status = PyTuple_GetItem(args, 2),
            let headers = PyTuple_GetItem(args, 3), let route = PyTuple_GetItem(args, 4)
        else { break }
        executor.asgiHead(
            id: UInt64(PyLong_AsUnsignedLongLong(id)), status: PyLong_AsLong(status), headers: PythonRuntime.bytes(of: headers) ?? [],
            route: PythonRuntime.string(of: route))
    case 5:
        guard PyTuple_Size(args) == 4, let id = PyTuple_GetItem(args, 1), let data = PyTuple_GetItem(args, 2),
            let more = PyTuple_GetItem(args, 3)
        else { break }
        let paused = executor.asgiBody(
            id: UInt64(PyLong_AsUnsignedLongLong(id)), data: PythonRuntime.bytes(of: data) ?? [], more: PyObject_IsTrue(more) == 1)
        if PyErr_Occurred() != nil { PyErr_Clear() }
        return PyBool_FromLong(paused ? 1 : 0)
    case 6:
        guard PyTuple_Size(args) == 3, let id = PyTuple_GetItem(args, 1), let error = PyTuple_GetItem(args, 2) else { break }
        executor.asgiEnd(
            id: UInt64(PyLong_AsUnsignedLongLong(id)), error: error == neutrino_py_none() ? nil : PythonRuntime.string(of: error))
    case 7:
        guard PyTuple_Size(args) == 4, let phase = PyTuple_GetItem(args, 1), let ok = PyTuple_GetItem(args, 2),
            let message = PyTuple_GetItem(args, 3)
        else { break }
        executor.lifespanReported(phase: PyLong_AsLong(phase), ok: PyObject_IsTrue(ok) == 1, message: PythonRuntime.string(of: message))
    default:
        break
    }
    if PyErr_Occurred() != nil { PyErr_Clear() }
    return noneResult()
}
