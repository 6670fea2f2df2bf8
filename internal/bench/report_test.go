//go:build unix

package main

import (
	"testing"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
)

func TestOutage(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var ds []time.Duration
		for _, n := range v {
			ds = append(ds, time.Duration(n)*time.Millisecond)
		}
		return ds
	}
	tests := []struct {
		name   string
		failed []time.Duration
		want   time.Duration
	}{
		{"none", nil, 0},
		{"one", ms(100), 0},
		{"one outage, out of order", ms(130, 100, 110), 30 * time.Millisecond},
		{"the longest of two", ms(100, 120, 400, 410, 430, 445), 45 * time.Millisecond},
		{"a gap of outageGap splits", ms(100, 149, 199), 49 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := row{load: &loadgen.Result{Failed: tt.failed}}
			if got := r.outage(); got != tt.want {
				t.Fatalf("outage(%v) = %v, want %v", tt.failed, got, tt.want)
			}
		})
	}
}
