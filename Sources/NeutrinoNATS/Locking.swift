import Glibc
import NeutrinoThreads

/// The shared pthread lock (NeutrinoThreads), under the name this module's code uses.
typealias PThreadLock = ConditionLock

extension Duration {
    /// Whole milliseconds, rounded up so that a positive duration never becomes 0 (cnats reads 0 as "default").
    var natsMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let ms = attoseconds / 1_000_000_000_000_000
        let remainder = attoseconds % 1_000_000_000_000_000
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        let (sum, overflow2) = total.addingReportingOverflow(ms + (remainder > 0 ? 1 : 0))
        return overflow || overflow2 ? .max : sum
    }

    /// Whole nanoseconds (the unit of stream and consumer configuration), saturating.
    var natsNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, overflow2) = total.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow || overflow2 ? .max : sum
    }
}
