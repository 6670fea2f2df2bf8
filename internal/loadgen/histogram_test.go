package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 63, 64, 65, 127, 128, 1000, time.Millisecond, time.Second, time.Hour} {
		i := bucketOf(d)
		if top := bucketTop(i); d > top {
			t.Errorf("%v falls in bucket %d whose top is %v", d, i, top)
		}
		if i > 0 && bucketTop(i-1) >= d {
			t.Errorf("%v falls in bucket %d, but bucket %d already reaches %v", d, i, i-1, bucketTop(i-1))
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	var all []time.Duration
	for range 100000 {
		d := time.Duration(rand.ExpFloat64() * float64(time.Millisecond))
		h.Record(d)
		all = append(all, d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		if got < exact || float64(got) > float64(exact)*1.04 {
			t.Errorf("p%v = %v, exact %v", q*100, got, exact)
		}
	}
	if h.Max() != all[len(all)-1] || h.Quantile(1) != h.Max() {
		t.Errorf("max %v / p100 %v, want %v", h.Max(), h.Quantile(1), all[len(all)-1])
	}
}
