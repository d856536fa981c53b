import Glibc
import Logging
import NeutrinoCore
import ServiceLifecycle

/// swift-otel's OTLP/HTTP exporter in `libNeutrinoOTLP.so` (the `NeutrinoOTLPExporter` target), loaded with dlopen when
/// tracing is configured. swift-otel references the full Foundation library: linked into the executables it loaded
/// Foundation, FoundationInternationalization and ICU into every process, about 8 MB of resident memory whether or
/// not it traced (bench/README.md, twenty-third round). The library is found beside the executable (both are built
/// into the same folder), or where `NEUTRINO_OTLP_LIBRARY` says.
///
/// `@unchecked Sendable`: C function pointers, which capture nothing and may be called from any thread.
struct OTLPPlugin: @unchecked Sendable {
    typealias Log = OTLPWire.Log
    typealias Done = OTLPWire.Done
    typealias Start =
        @convention(c) (
            UnsafePointer<CChar>, Log, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
        ) -> Int32
    typealias Run = @convention(c) (Done, UnsafeMutableRawPointer?) -> Void
    typealias Shutdown = @convention(c) () -> Void
    typealias SpanStart =
        @convention(c) (
            UnsafePointer<CChar>, Int32, UnsafePointer<CChar>?, UInt64, UnsafeMutablePointer<CChar>, UnsafeMutablePointer<Int32>
        ) -> UnsafeMutableRawPointer?
    typealias SpanEnd = @convention(c) (UnsafeMutableRawPointer, UnsafePointer<CChar>?, UInt64) -> Void

    static let fileName = "libNeutrinoOTLP.so"

    let start: Start
    let run: Run
    let shutdown: Shutdown
    let spanStart: SpanStart
    let spanEnd: SpanEnd

    /// Where the library is looked for: `NEUTRINO_OTLP_LIBRARY`, else beside the running executable.
    static func path(environment: [String: String]) -> String {
        if let path = environment["NEUTRINO_OTLP_LIBRARY"], !path.isEmpty { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return fileName }
        let executable = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = executable.lastIndex(of: "/") else { return fileName }
        return String(executable[...slash]) + fileName
    }

    /// Loads the library at `path` and finds its functions.
    static func load(path: String) throws -> OTLPPlugin {
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            throw TracingError(
                "tracing needs \(fileName) (swift-otel's exporter), built beside the executables; it could not be loaded: \(reason)")
        }
        func symbol<T>(_ name: String, as type: T.Type) throws -> T {
            guard let address = dlsym(handle, name) else {
                throw TracingError("\(path) has no \(name): it is not the OTLP exporter of this build")
            }
            return unsafeBitCast(address, to: type)
        }
        return OTLPPlugin(
            start: try symbol("neutrino_otlp_start", as: Start.self), run: try symbol("neutrino_otlp_run", as: Run.self),
            shutdown: try symbol("neutrino_otlp_shutdown", as: Shutdown.self),
            spanStart: try symbol("neutrino_otlp_span_start", as: SpanStart.self),
            spanEnd: try symbol("neutrino_otlp_span_end", as: SpanEnd.self))
    }

    /// Bootstraps the exporter for `service` with the process's `OTEL_*` variables; its diagnostics go to `logger`.
    func bootstrap(service: String, environment: [String: String], logger: Logger) throws {
        var w = JSONWriter()
        w.beginObject()
        w.key("service")
        w.string(service)
        w.key("environment")
        w.beginObject()
        for (key, value) in environment.sorted(by: { $0.key < $1.key }) where key.hasPrefix("OTEL_") {
            w.key(key)
            w.string(value)
        }
        w.endObject()
        w.endObject()
        // The logger lives as long as the process: the exporter may log until its last export.
        let context = Unmanaged.passRetained(LoggerBox(logger)).toOpaque()
        var error: UnsafeMutablePointer<CChar>?
        let status = w.text.withCString { start($0, logLine, context, &error) }
        guard status == 0 else {
            let message = error.map { String(cString: $0) } ?? "the exporter did not start"
            free(error)
            Unmanaged<LoggerBox>.fromOpaque(context).release()
            throw TracingError(message)
        }
    }
}

/// The exporter's service: runs until the service group shuts down, then stops the exporter, which sends the spans
/// ended so far before this returns.
struct OTLPExportService: Service {
    let plugin: OTLPPlugin

    func run() async throws {
        let plugin = self.plugin
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    plugin.run(resumeContinuation, Unmanaged.passRetained(ContinuationBox(continuation)).toOpaque())
                }
            } onCancel: {
                plugin.shutdown()
            }
        } onGracefulShutdown: {
            plugin.shutdown()
        }
    }
}

private final class LoggerBox {
    let logger: Logger
    init(_ logger: Logger) { self.logger = logger }
}

private final class ContinuationBox {
    let continuation: CheckedContinuation<Void, Never>
    init(_ continuation: CheckedContinuation<Void, Never>) { self.continuation = continuation }
}

private let logLine: OTLPPlugin.Log = { level, text, context in
    guard let context else { return }
    let logger = Unmanaged<LoggerBox>.fromOpaque(context).takeUnretainedValue().logger
    logger.log(level: OTLPWire.level(code: level), "\(String(cString: text))")
}

private let resumeContinuation: OTLPPlugin.Done = { context in
    guard let context else { return }
    Unmanaged<ContinuationBox>.fromOpaque(context).takeRetainedValue().continuation.resume()
}
