package replication

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// delayProxy forwards TCP connections to target, delaying every chunk by
// delay in each direction (a WAN link of RTT 2*delay).
func delayProxy(tb testing.TB, target string, delay time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			at time.Time
			b  []byte
		}
		ch := make(chan chunk, 1024)
		go func() {
			defer close(ch)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					ch <- chunk{time.Now().Add(delay), buf[:n]}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range ch {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
		io.Copy(io.Discard, src)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(d, c)
			go pipe(c, d)
		}
	}()
	return ln.Addr().String()
}

// BenchmarkPublishAck measures JetStream publish-acknowledgement latency
// on a three-server embedded cluster for an R1 stream led by the
// publisher's own server and an R3 stream, on loopback and with every
// route crossing a simulated WAN link (one-way delay 10 ms: three regions
// 20 ms apart). It is the figure behind the multi-region topology choice
// (replication/doc.go): R3 over regions costs one inter-region round trip
// per acknowledgement. Run with -benchtime=300x.
func BenchmarkPublishAck(b *testing.B) {
	for _, delay := range []time.Duration{0, 10 * time.Millisecond} {
		b.Run(fmt.Sprintf("oneway=%s", delay), func(b *testing.B) {
			c := startDelayedCluster(b, 3, delay)
			nc := c.connectNode(b, 0)
			js, _ := jetstream.New(nc)
			ctx := context.Background()
			for _, replicas := range []int{1, 3} {
				b.Run(fmt.Sprintf("R%d", replicas), func(b *testing.B) {
					name := fmt.Sprintf("BENCH_R%d", replicas)
					subj := fmt.Sprintf("bench.r%d", replicas)
					// The publisher's server leads the stream (a region's own
					// stream, or the stretched stream's leader in the
					// publisher's region): R1 is recreated until placed there,
					// R3 asked to move its leader there.
					deadline := time.Now().Add(time.Minute)
					for {
						if time.Now().After(deadline) {
							b.Fatal("the stream's leader never moved to the publisher's server")
						}
						s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subj}, Replicas: replicas, Storage: jetstream.FileStorage})
						if err != nil {
							time.Sleep(100 * time.Millisecond)
							continue
						}
						info, err := s.Info(ctx)
						if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
							time.Sleep(100 * time.Millisecond)
							continue
						}
						if info.Cluster.Leader == "n0" {
							if _, err := js.Publish(ctx, subj, []byte("warm-up")); err == nil {
								break
							}
							continue
						}
						if replicas == 1 {
							js.DeleteStream(ctx, name)
						} else {
							nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+name, []byte(`{"placement":{"preferred":"n0"}}`), 5*time.Second)
						}
						time.Sleep(200 * time.Millisecond)
					}
					lat := make([]time.Duration, 0, b.N)
					b.ResetTimer()
					for i := range b.N {
						start := time.Now()
						if _, err := js.Publish(ctx, subj, []byte("x"), jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
							b.Fatal(err)
						}
						lat = append(lat, time.Since(start))
					}
					b.StopTimer()
					slices.Sort(lat)
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
				})
			}
		})
	}
}

// startDelayedCluster is startNATSCluster with every route through a
// delay proxy.
func startDelayedCluster(b *testing.B, n int, delay time.Duration) *natsCluster {
	clients, routes := freePorts(b, n), freePorts(b, n)
	c := &natsCluster{t: b}
	// One proxy in front of each route listener, advertised as the
	// server's route address, so that gossiped and pooled routes cross the
	// simulated link too.
	proxies := make([]string, n)
	for i := range n {
		proxies[i] = delayProxy(b, routes[i], delay)
	}
	for i := range n {
		cfg := DefaultEmbeddedConfig()
		cfg.Listen = clients[i]
		cfg.StoreDir = filepath.Join(b.TempDir(), "nats")
		cfg.ServerName = fmt.Sprintf("n%d", i)
		cfg.NodePassword = testNodePass
		cfg.ClusterListen = routes[i]
		cfg.RoutePassword = "route-password-for-tests"
		cfg.ClusterAdvertise = proxies[i]
		for j := range n {
			if j != i {
				cfg.Routes = append(cfg.Routes, proxies[j])
			}
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	b.Cleanup(c.shutdown)
	if err := c.start(); err != nil {
		b.Fatal(err)
	}
	return c
}
