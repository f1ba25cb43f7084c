package node

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Stream health of the event log: what this node's NATS connection sees of
// the JetStream stream, polled in the background (a NATS request, kept off
// the scrape path).
const (
	metricStreamUp       = "tally.events.stream_up"
	metricStreamMessages = "tally.events.stream_messages"
	metricStreamLastSeq  = "tally.events.stream_last_sequence"
	metricStreamReplicas = "tally.events.stream_replicas"
	metricStreamCurrent  = "tally.events.stream_replicas_current"
	streamPollEvery      = 10 * time.Second
)

type streamHealth struct {
	up                bool
	messages, lastSeq uint64
	replicas, current int
}

type streamMetrics struct {
	last atomic.Pointer[streamHealth]
}

// registerStream registers the stream gauges; nothing is observed until
// the first poll.
func (m *nodeMetrics) registerStream(meter metric.Meter) error {
	var err error
	gauge := func(name, desc string) metric.Float64ObservableGauge {
		g, e := meter.Float64ObservableGauge(name, metric.WithDescription(desc))
		err = errors.Join(err, e)
		return g
	}
	up := gauge(metricStreamUp, "1 if the event stream answered this node's last info request (every 10s).")
	msgs := gauge(metricStreamMessages, "Messages in the event stream.")
	last := gauge(metricStreamLastSeq, "Last sequence number of the event stream.")
	replicas := gauge(metricStreamReplicas, "Configured replicas of the event stream.")
	current := gauge(metricStreamCurrent, "Replicas of the event stream that are current (the stream leader included).")
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		h := m.stream.last.Load()
		if h == nil {
			return nil
		}
		if !h.up {
			o.ObserveFloat64(up, 0)
			return nil
		}
		o.ObserveFloat64(up, 1)
		o.ObserveFloat64(msgs, float64(h.messages))
		o.ObserveFloat64(last, float64(h.lastSeq))
		o.ObserveFloat64(replicas, float64(h.replicas))
		o.ObserveFloat64(current, float64(h.current))
		return nil
	}, up, msgs, last, replicas, current)
	return err
}

// pollStream asks for the stream's info every streamPollEvery.
func (m *nodeMetrics) pollStream(ctx context.Context, ev *eventLog) {
	t := time.NewTicker(streamPollEvery)
	defer t.Stop()
	for {
		m.stream.last.Store(streamInfo(ctx, ev))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func streamInfo(ctx context.Context, ev *eventLog) *streamHealth {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := ev.js.Stream(ctx, ev.stream)
	if err != nil {
		return &streamHealth{}
	}
	info := s.CachedInfo()
	h := &streamHealth{up: true, messages: info.State.Msgs, lastSeq: info.State.LastSeq, replicas: info.Config.Replicas, current: 1}
	if info.Cluster != nil {
		for _, p := range info.Cluster.Replicas {
			if p != nil && p.Current {
				h.current++
			}
		}
	}
	return h
}
