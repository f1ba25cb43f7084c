package loadtest

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// WriteHTML writes res as one self-contained HTML page: the summary table
// per scenario, errors by code, and inline SVG charts of latency over time
// (p50, p99 and max per second), throughput over time (successful and
// failed iterations per second), and the latency distribution, with the
// marked events (Result.Events) drawn on both timelines. The page loads
// nothing: no scripts, styles, fonts or images from anywhere. title heads
// the page (e.g. the command that ran).
func WriteHTML(w io.Writer, title string, res Result) error {
	reports := []Report{res.Report}
	if res.hasParts() {
		reports = append(reports, res.Scenarios...)
	}
	page := htmlPage{
		Title:   title,
		Started: res.Started.UTC().Format(time.RFC3339),
		Events:  res.Events,
	}
	for _, r := range reports {
		rate := "closed loop"
		if r.Rate > 0 {
			rate = fmt.Sprintf("%.0f/s", r.Rate)
		}
		page.Rows = append(page.Rows, htmlRow{
			Scenario: r.Scenario, Target: r.Target, Concurrency: r.Concurrency, Rate: rate,
			Duration: r.Duration.Round(time.Millisecond).String(), Requests: r.Requests, OK: r.OK,
			Throughput: fmt.Sprintf("%.0f", r.Throughput),
			P50:        fmtLatency(r.P50), P90: fmtLatency(r.P90), P99: fmtLatency(r.P99),
			P999: fmtLatency(r.P999), Max: fmtLatency(r.Max), Errors: r.ErrorSummary(),
		})
	}
	page.Charts = []svgChart{latencyChart(res), throughputChart(res), distributionChart(res)}
	return htmlTemplate.Execute(w, page)
}

// hasParts reports whether the result has scenarios other than its own
// (a mixed load), worth a row each.
func (res Result) hasParts() bool {
	return len(res.Scenarios) > 1 || (len(res.Scenarios) == 1 && res.Scenarios[0].Scenario != res.Report.Scenario)
}

// Parts returns the per-scenario reports of a mixed load, or nil when the
// result is one scenario (whose report is Result.Report).
func (res Result) Parts() []Report {
	if res.hasParts() {
		return res.Scenarios
	}
	return nil
}

type htmlPage struct {
	Title, Started string
	Rows           []htmlRow
	Charts         []svgChart
	Events         []Event
}

type htmlRow struct {
	Scenario, Target         string
	Concurrency              int
	Rate, Duration           string
	Requests, OK             int64
	Throughput               string
	P50, P90, P99, P999, Max string
	Errors                   string
}

// svgChart is one line chart, already laid out in SVG user units.
type svgChart struct {
	Title, XLabel, YLabel string
	W, H                  int
	// The plot area.
	L, T, R, B int
	Series     []svgSeries
	XTicks     []svgTick
	YTicks     []svgTick
	Markers    []svgTick
	Empty      bool
}

type svgSeries struct {
	Label, Color, Points string
	LegendY              int
}

type svgTick struct {
	Pos   float64
	Label string
	// LabelY places a marker's label; neighbours alternate rows.
	LabelY int
}

const (
	chartW, chartH          = 900, 300
	chartL, chartT, chartRM = 70, 40, 150
	chartBM                 = 40
)

// plot lays out series of (x, y) points on a chart with the given ranges.
type plot struct {
	c                      svgChart
	xmin, xmax, ymin, ymax float64
}

func newPlot(title, xlabel, ylabel string, xmin, xmax, ymax float64) *plot {
	if xmax <= xmin {
		xmax = xmin + 1
	}
	if ymax <= 0 || math.IsNaN(ymax) || math.IsInf(ymax, 0) {
		ymax = 1
	}
	ymax = niceCeil(ymax)
	p := &plot{xmin: xmin, xmax: xmax, ymax: ymax}
	p.c = svgChart{Title: title, XLabel: xlabel, YLabel: ylabel, W: chartW, H: chartH,
		L: chartL, T: chartT, R: chartW - chartRM, B: chartH - chartBM}
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		p.c.YTicks = append(p.c.YTicks, svgTick{Pos: p.y(v), Label: trimFloat(v)})
	}
	return p
}

// x and y map a value to SVG units, to a tenth of a unit.
func (p *plot) x(v float64) float64 {
	return round1(float64(p.c.L) + (v-p.xmin)/(p.xmax-p.xmin)*float64(p.c.R-p.c.L))
}

func (p *plot) y(v float64) float64 {
	v = math.Max(p.ymin, math.Min(v, p.ymax))
	return round1(float64(p.c.B) - (v-p.ymin)/(p.ymax-p.ymin)*float64(p.c.B-p.c.T))
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

func (p *plot) series(label, color string, xs, ys []float64) {
	var b strings.Builder
	for i := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(p.x(xs[i]), 'f', 1, 64))
		b.WriteByte(',')
		b.WriteString(strconv.FormatFloat(p.y(ys[i]), 'f', 1, 64))
	}
	p.c.Series = append(p.c.Series, svgSeries{Label: label, Color: color, Points: b.String(), LegendY: p.c.T + 16*len(p.c.Series)})
}

func (p *plot) xTick(v float64, label string) {
	p.c.XTicks = append(p.c.XTicks, svgTick{Pos: p.x(v), Label: label})
}

// events marks the events that fall on the time axis (seconds).
func (p *plot) events(evs []Event) {
	for _, e := range evs {
		s := e.AtMS / 1000
		if s < p.xmin || s > p.xmax {
			continue
		}
		row := len(p.c.Markers) % 2
		p.c.Markers = append(p.c.Markers, svgTick{Pos: p.x(s), Label: e.Label, LabelY: p.c.T - 4 - 12*row})
	}
}

// timeTicks puts about eight ticks on a time axis of n seconds.
func (p *plot) timeTicks(n float64) {
	step := niceCeil(n / 8)
	if step < 1 {
		step = 1
	}
	for v := 0.0; v <= n+1e-9; v += step {
		p.xTick(v, trimFloat(v)+"s")
	}
}

// timeSpan is the number of seconds a timeline chart shows.
func timeSpan(res Result) float64 {
	n := 1.0
	if k := len(res.Timeline); k > 0 {
		n = float64(res.Timeline[k-1].T + 1)
	}
	return math.Max(n, res.Report.Duration.Seconds())
}

func latencyChart(res Result) svgChart {
	n := timeSpan(res)
	var xs, p50, p99, mx []float64
	ymax := 0.0
	for _, s := range res.Timeline {
		xs = append(xs, float64(s.T)+0.5)
		p50, p99, mx = append(p50, s.P50MS), append(p99, s.P99MS), append(mx, s.MaxMS)
		ymax = math.Max(ymax, s.MaxMS)
	}
	p := newPlot("Latency over time (per second of scheduled start)", "time since the start of recording", "ms", 0, n, ymax)
	p.series("max", "#b0b0b0", xs, mx)
	p.series("p99", "#d9534f", xs, p99)
	p.series("p50", "#337ab7", xs, p50)
	p.timeTicks(n)
	p.events(res.Events)
	p.c.Empty = len(xs) == 0
	return p.c
}

func throughputChart(res Result) svgChart {
	n := timeSpan(res)
	var xs, ok, failed []float64
	ymax := 0.0
	for _, s := range res.Timeline {
		xs = append(xs, float64(s.T)+0.5)
		ok, failed = append(ok, float64(s.OK)), append(failed, float64(s.Errors))
		ymax = math.Max(ymax, float64(s.OK))
		ymax = math.Max(ymax, float64(s.Errors))
	}
	p := newPlot("Throughput over time", "time since the start of recording", "per second", 0, n, ymax)
	p.series("ok/s", "#5cb85c", xs, ok)
	p.series("errors/s", "#d9534f", xs, failed)
	p.timeTicks(n)
	p.events(res.Events)
	p.c.Empty = len(xs) == 0
	return p.c
}

// distributionChart draws latency against percentile on the 1/(1-p) scale
// of HDR histogram plots, so the tail gets room.
func distributionChart(res Result) svgChart {
	const maxNines = 5.0 // 99.999%
	pos := func(pct float64) float64 {
		if pct >= 100 {
			return maxNines
		}
		return math.Min(maxNines, math.Log10(100/(100-pct)))
	}
	var xs, ys []float64
	ymax := 0.0
	for _, pt := range res.Distribution {
		xs, ys = append(xs, pos(pt.Percentile)), append(ys, pt.MS)
		ymax = math.Max(ymax, pt.MS)
	}
	p := newPlot("Latency distribution", "percentile", "ms", 0, maxNines, ymax)
	p.series("latency", "#337ab7", xs, ys)
	for i, l := range []string{"0%", "90%", "99%", "99.9%", "99.99%", "99.999%"} {
		p.xTick(float64(i), l)
	}
	p.c.Empty = len(xs) == 0
	return p.c
}

// niceCeil rounds v up to a round multiple (1, 1.5, 2, 2.5, 3, 4, 5, 6
// or 8) of a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*e >= v*(1-1e-12) {
			return m * e
		}
	}
	return 10 * e
}

func trimFloat(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

// htmlTemplate is well-formed XML as well as HTML, so that tests can parse
// it strictly; it references nothing outside the page.
var htmlTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"seconds": func(ms float64) float64 { return ms / 1000 },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<title>{{.Title}}</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td.l, th.l { text-align: left; }
svg { display: block; margin: 1em 0 2em 0; }
svg text { font-size: 11px; fill: #333; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .grid { stroke: #eee; stroke-width: 1; }
svg .marker { stroke: #f0ad4e; stroke-width: 2; stroke-dasharray: 4 3; }
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p>Recording started {{.Started}}. Latencies are from each iteration's start (its scheduled start in an open-loop run) to its answer; throughput counts successful iterations.</p>
<table>
<tr><th class="l">scenario</th><th class="l">target</th><th>conc</th><th>rate</th><th>duration</th><th>requests</th><th>ok</th><th>ok/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th class="l">errors</th></tr>
{{range .Rows}}<tr><td class="l">{{.Scenario}}</td><td class="l">{{.Target}}</td><td>{{.Concurrency}}</td><td>{{.Rate}}</td><td>{{.Duration}}</td><td>{{.Requests}}</td><td>{{.OK}}</td><td>{{.Throughput}}</td><td>{{.P50}}</td><td>{{.P90}}</td><td>{{.P99}}</td><td>{{.P999}}</td><td>{{.Max}}</td><td class="l">{{.Errors}}</td></tr>
{{end}}</table>
{{if .Events}}<h2>Events</h2>
<table>
<tr><th>at</th><th class="l">event</th></tr>
{{range .Events}}<tr><td>{{printf "%.3f" (seconds .AtMS)}} s</td><td class="l">{{.Label}}</td></tr>
{{end}}</table>
{{end}}{{range .Charts}}<h2>{{.Title}}</h2>
{{if .Empty}}<p>No recorded iterations.</p>
{{else}}<svg width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="{{.Title}}">
{{$c := .}}{{range .YTicks}}<line class="grid" x1="{{$c.L}}" x2="{{$c.R}}" y1="{{.Pos}}" y2="{{.Pos}}"/>
<text x="{{$c.L}}" y="{{.Pos}}" dx="-6" dy="4" text-anchor="end">{{.Label}}</text>
{{end}}{{range .XTicks}}<line class="grid" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.T}}" y2="{{$c.B}}"/>
<text x="{{.Pos}}" y="{{$c.B}}" dy="16" text-anchor="middle">{{.Label}}</text>
{{end}}<line class="axis" x1="{{.L}}" x2="{{.R}}" y1="{{.B}}" y2="{{.B}}"/>
<line class="axis" x1="{{.L}}" x2="{{.L}}" y1="{{.T}}" y2="{{.B}}"/>
<text x="{{.L}}" y="{{.T}}" dx="-6" dy="-12" text-anchor="end">{{.YLabel}}</text>
<text x="{{.R}}" y="{{.H}}" dy="-4" text-anchor="end">{{.XLabel}}</text>
{{range .Markers}}<line class="marker" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$c.T}}" y2="{{$c.B}}"><title>{{.Label}}</title></line>
<text x="{{.Pos}}" y="{{.LabelY}}" dx="3">{{.Label}}</text>
{{end}}{{range .Series}}<polyline fill="none" stroke="{{.Color}}" stroke-width="1.5" points="{{.Points}}"/>
<rect x="{{$c.R}}" y="{{.LegendY}}" width="12" height="3" fill="{{.Color}}" transform="translate(12,-2)"/>
<text x="{{$c.R}}" y="{{.LegendY}}" dx="30" dy="2">{{.Label}}</text>
{{end}}</svg>
{{end}}{{end}}</body>
</html>
`))
