import CPython
import Synchronization

/// One `neutrino.report_progress(fraction, message)` call from a running task.
public struct ProgressReport: Sendable {
    public var taskID: String
    public var task: String
    public var pool: String
    public var attempt: Int
    public var fraction: Double
    public var message: String?
}

/// Where `neutrino.report_progress` goes: the runtime is handed a built-in function (`set_progress_sink`) that
/// calls the handler the worker installed, on the task's own thread (the GIL held; the handler must only queue).
public enum ProgressReporting {
    private static let handler = Mutex<(@Sendable (ProgressReport) -> Void)?>(nil)

    /// Installs the handler for every task of this process.
    public static func install(_ body: @escaping @Sendable (ProgressReport) -> Void) {
        handler.withLock { $0 = body }
    }

    static func deliver(_ report: ProgressReport) {
        let body = handler.withLock { $0 }
        body?(report)
    }

    /// `PyMethodDef` for the sink; allocated once and never freed, as CPython requires.
    nonisolated(unsafe) static let methodDef: UnsafeMutablePointer<PyMethodDef> = {
        let def = UnsafeMutablePointer<PyMethodDef>.allocate(capacity: 2)
        def.initialize(
            to: PyMethodDef(
                ml_name: UnsafePointer(strdup("neutrino_progress_sink")),
                ml_meth: progressSink, ml_flags: METH_VARARGS, ml_doc: nil))
        (def + 1).initialize(to: PyMethodDef(ml_name: nil, ml_meth: nil, ml_flags: 0, ml_doc: nil))
        return def
    }()

    /// The built-in function object for `set_progress_sink` (GIL held).
    static func makeSinkFunction() -> UnsafeMutablePointer<PyObject>? {
        PyCMethod_New(methodDef, nil, nil, nil)
    }
}

/// `sink(task_id, task, pool, attempt, fraction, message)`, called from Python.
private let progressSink: PyCFunction = { _, args in
    func string(_ i: Int) -> String? {
        guard let args, let item = PyTuple_GetItem(args, i), let utf8 = PyUnicode_AsUTF8(item) else { PyErr_Clear(); return nil }
        return String(cString: utf8)
    }
    if let args, PyTuple_Size(args) == 6, let taskID = string(0), let task = string(1), let pool = string(2),
        let attemptObject = PyTuple_GetItem(args, 3), let fractionObject = PyTuple_GetItem(args, 4)
    {
        let attempt = PyLong_AsLong(attemptObject)
        let fraction = PyFloat_AsDouble(fractionObject)
        if PyErr_Occurred() != nil {
            PyErr_Clear()
        } else {
            ProgressReporting.deliver(
                ProgressReport(
                    taskID: taskID, task: task, pool: pool, attempt: Int(attempt),
                    fraction: fraction, message: string(5)))
        }
    }
    let none = neutrino_py_none()
    Py_IncRef(none)
    return none
}
