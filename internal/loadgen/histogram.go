package loadgen

import (
	"math"
	"math/bits"
	"time"
)

// Histogram counts durations in log-linear buckets: 2^subBits buckets per
// power of two, so every quantile is within 1/2^subBits (under 2%) of the
// true value, at any scale, in a fixed 30 KiB.
type Histogram struct {
	counts [64 << subBits]int64
	n      int64
	max    time.Duration
}

const subBits = 6

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v)
	}
	exp := bits.Len64(v) - subBits - 1
	return (exp+1)<<subBits + int(v>>exp) - 1<<subBits
}

// bucketTop is the largest duration that falls into bucket i.
func bucketTop(i int) time.Duration {
	if i < 1<<subBits {
		return time.Duration(i)
	}
	exp := i>>subBits - 1
	mant := uint64(i&(1<<subBits-1)) + 1<<subBits
	top := (mant+1)<<exp - 1
	if top > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(top)
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

// Merge adds every observation of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count is the number of observations.
func (h *Histogram) Count() int64 { return h.n }

// Max is the largest observation.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the duration below which a fraction q of the
// observations fall (rounded up to its bucket's top, capped at Max).
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(bucketTop(i), h.max)
		}
	}
	return h.max
}
