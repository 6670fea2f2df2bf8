//go:build unix

package main

import (
	"fmt"
	"html"
	"math"
	"strings"
	"time"

	"github.com/handoffd/handoff/internal/loadgen"
)

// The plot has two panels with one line per scenario and load mode:
// failed requests per 10,000 during the restarts, and the latency
// distribution during the restarts next to the steady-state p99. Both use
// log scales: failures range over zero to thousands, latencies over
// microseconds to seconds.

const (
	plotWidth  = 960
	labelWidth = 250 // scenario and mode labels
	panelWidth = plotWidth - labelWidth - 40
	lineHeight = 16
	panelGap   = 70
)

var modeColors = map[loadgen.Mode]string{loadgen.KeepAlive: "#1b9e77", loadgen.NewConn: "#d95f02", loadgen.Mixed: "#7570b3"}

// logScale maps v in [lo, hi] onto [0, panelWidth] logarithmically.
func logScale(v, lo, hi float64) float64 {
	v = min(max(v, lo), hi)
	return panelWidth * math.Log10(v/lo) / math.Log10(hi/lo)
}

type svg struct{ strings.Builder }

func (s *svg) text(x, y float64, anchor, style, format string, a ...any) {
	fmt.Fprintf(s, `<text x="%.1f" y="%.1f" text-anchor="%s" %s>%s</text>`+"\n", x, y, anchor, style, html.EscapeString(fmt.Sprintf(format, a...)))
}

func (s *svg) line(x1, y1, x2, y2 float64, style string) {
	fmt.Fprintf(s, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" %s/>`+"\n", x1, y1, x2, y2, style)
}

// axis draws a log axis at y with a tick and label at each power of ten.
func (s *svg) axis(y, lo, hi float64, label func(v float64) string) {
	for v := lo; v <= hi*1.0001; v *= 10 {
		x := labelWidth + logScale(v, lo, hi)
		s.line(x, y, x, y+4, `stroke="#555"`)
		s.text(x, y+16, "middle", `font-size="11"`, "%s", label(v))
	}
	s.line(labelWidth, y, labelWidth+panelWidth, y, `stroke="#555"`)
}

// grid draws faint vertical lines at each power of ten between top and bottom.
func (s *svg) grid(top, bottom, lo, hi float64) {
	for v := lo; v <= hi*1.0001; v *= 10 {
		x := labelWidth + logScale(v, lo, hi)
		s.line(x, top, x, bottom, `stroke="#ddd"`)
	}
}

// plot draws both panels.
func plot(rows []row) []byte {
	var s svg
	h := float64(2*len(rows)*lineHeight + 2*panelGap + 120)
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", plotWidth, h)
	fmt.Fprintf(&s, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	y := s.failurePanel(rows, 30)
	s.latencyPanel(rows, y+panelGap)
	s.WriteString("</svg>\n")
	return []byte(s.String())
}

// rowLabels writes each row's scenario (at its first row) and mode, after
// the protocol if it is not cleartext HTTP/1.1.
func (s *svg) rowLabels(rows []row, top float64) {
	for i, r := range rows {
		y := top + float64(i*lineHeight) + 12
		if i == 0 || rows[i-1].scenario != r.scenario {
			s.text(10, y, "start", `font-weight="bold"`, "%s", r.scenario)
			if i > 0 {
				s.line(10, y-13, labelWidth+panelWidth, y-13, `stroke="#eee"`)
			}
		}
		label := r.mode.String()
		if r.protocol != loadgen.HTTP1 {
			label = r.protocol.String() + " " + label
		}
		s.text(labelWidth-8, y, "end", fmt.Sprintf(`fill="%s"`, modeColors[r.mode]), "%s", label)
	}
}

const failLo, failHi = 0.1, 10000.0 // failed requests per 10,000

func (s *svg) failurePanel(rows []row, top float64) float64 {
	s.text(10, top, "start", `font-size="15" font-weight="bold"`, "Failed requests per 10,000 during restarts (log scale; 0 is none at all)")
	top += 14
	bottom := top + float64(len(rows)*lineHeight)
	s.grid(top, bottom, failLo, failHi)
	s.rowLabels(rows, top)
	for i, r := range rows {
		y := top + float64(i*lineHeight)
		per10k := 10000 * r.failRate()
		if r.load.FailedCount() == 0 {
			s.text(labelWidth+4, y+12, "start", `font-weight="bold"`, "0")
			continue
		}
		w := max(logScale(per10k, failLo, failHi), 2)
		fmt.Fprintf(s, `<rect x="%d" y="%.1f" width="%.1f" height="%d" fill="%s"/>`+"\n", labelWidth, y+2, w, lineHeight-4, modeColors[r.mode])
		s.text(labelWidth+w+4, y+12, "start", "", "%.1f (%d of %d)", per10k, r.load.FailedCount(), r.load.Requests)
	}
	s.axis(bottom+4, failLo, failHi, func(v float64) string { return trimFloat(v) })
	return bottom + 24
}

const latLo, latHi = float64(100 * time.Microsecond), float64(time.Second)

func (s *svg) latencyPanel(rows []row, top float64) {
	s.text(10, top, "start", `font-size="15" font-weight="bold"`, "Latency of successful requests (log scale)")
	s.text(10, top+16, "start", `font-size="11"`, "bar: p50 to p99 during restarts; tick: p99.9; line to max; hollow diamond: p99 without restarts (steady)")
	top += 30
	bottom := top + float64(len(rows)*lineHeight)
	s.grid(top, bottom, latLo, latHi)
	s.rowLabels(rows, top)
	x := func(d time.Duration) float64 { return labelWidth + logScale(float64(d), latLo, latHi) }
	for i, r := range rows {
		y := top + float64(i*lineHeight) + 8
		l, color := &r.load.Latency, modeColors[r.mode]
		s.line(x(l.Quantile(0.5)), y, x(l.Max()), y, fmt.Sprintf(`stroke="%s"`, color))
		fmt.Fprintf(s, `<rect x="%.1f" y="%.1f" width="%.1f" height="8" fill="%s"/>`+"\n", x(l.Quantile(0.5)), y-4, max(x(l.Quantile(0.99))-x(l.Quantile(0.5)), 1), color)
		s.line(x(l.Quantile(0.999)), y-6, x(l.Quantile(0.999)), y+6, fmt.Sprintf(`stroke="%s" stroke-width="2"`, color))
		sx := x(r.steady.Latency.Quantile(0.99))
		fmt.Fprintf(s, `<path d="M%.1f %.1f l5 5 l-5 5 l-5 -5 z" fill="none" stroke="black"/>`+"\n", sx, y-5)
	}
	s.axis(bottom+4, latLo, latHi, func(v float64) string { return time.Duration(v).String() })
}

// trimFloat prints v without trailing zeros.
func trimFloat(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.1f", v), "0"), ".")
}
