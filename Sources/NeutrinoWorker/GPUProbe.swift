import Glibc
import NeutrinoThreads

/// Whether a GPU is visible to this process: for the start-up log and the heartbeats.
enum GPUProbe {
    struct Result: Sendable {
        var visible: Bool
        var description: String
    }

    static func probe() -> Result {
        if let raw = getenv("CUDA_VISIBLE_DEVICES"), case let devices = String(cString: raw), devices.isEmpty || devices == "-1" {
            return Result(visible: false, description: "none (CUDA_VISIBLE_DEVICES hides all)")
        }
        guard let (status, out) = ChildProcess.run(["nvidia-smi", "-L"]) else { return Result(visible: false, description: "none (no nvidia-smi)") }
        let gpus = out.split(separator: "\n").filter { $0.hasPrefix("GPU ") }
        guard status == 0, !gpus.isEmpty else { return Result(visible: false, description: "none (running on CPU)") }
        return Result(visible: true, description: gpus.joined(separator: "; "))
    }
}
