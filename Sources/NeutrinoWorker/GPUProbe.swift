import Foundation

/// Whether a GPU is visible to this process: for the start-up log and the heartbeats.
enum GPUProbe {
    struct Result: Sendable {
        var visible: Bool
        var description: String
    }

    static func probe() -> Result {
        let env = ProcessInfo.processInfo.environment
        if let devices = env["CUDA_VISIBLE_DEVICES"], devices.isEmpty || devices == "-1" {
            return Result(visible: false, description: "none (CUDA_VISIBLE_DEVICES hides all)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["nvidia-smi", "-L"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        do {
            try process.run()
            process.waitUntilExit()
        } catch {
            return Result(visible: false, description: "none (no nvidia-smi)")
        }
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let gpus = out.split(separator: "\n").filter { $0.hasPrefix("GPU ") }
        guard process.terminationStatus == 0, !gpus.isEmpty else { return Result(visible: false, description: "none (running on CPU)") }
        return Result(visible: true, description: gpus.joined(separator: "; "))
    }
}
