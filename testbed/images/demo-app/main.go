// demo-app is the testbed's workload: a small HTTP server that behaves as a well-run service does.
//
//   - GET /            answers 200 with the pod and node that served it (also in X-Served-By), so a
//     client can tell which replica answered each request; ?sleep=250ms holds the answer that long,
//     to have requests in flight during a shutdown.
//   - GET /healthz     200 while serving, 503 once shutdown has begun (readiness probe).
//   - SIGTERM          logs it, stops accepting new connections, finishes the requests in flight,
//     logs how many it served, and exits 0. This is the behaviour that makes the load balancer's lag,
//     not the app, the cause of failed requests during a rollout.
//
// `demo-app fetch -url U -count N -interval D` is the client side: it sends N GET requests, one per
// interval, and prints one JSON line per request (status, which pod answered, error), then a summary.
// Run as a pod, it measures a Service from inside the cluster's network on any cluster.
//
// `demo-app otlp-sink` is the smallest OTLP/HTTP receiver: it accepts exports on :4318, logs what
// arrived (path, content type, size) and answers success, so tests can see a process export traces.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	if len(os.Args) > 1 && os.Args[1] == "fetch" {
		os.Exit(fetch(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "otlp-sink" {
		otlpSink()
		return
	}
	addr := envOr("LISTEN", ":8080")
	pod := envOr("POD_NAME", hostname())
	node := envOr("NODE_NAME", "unknown")
	grace := durationEnv("SHUTDOWN_TIMEOUT", 20*time.Second)

	var served, inflight atomic.Int64
	var stopping atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if stopping.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Add(-1)
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil && d > 0 && d <= time.Minute {
			time.Sleep(d)
		}
		served.Add(1)
		w.Header().Set("X-Served-By", pod)
		fmt.Fprintf(w, "pod=%s node=%s\n", pod, node)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	done := make(chan struct{})
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		s := <-sig
		stopping.Store(true)
		log.Printf("received %v: shutting down gracefully (in flight: %d)", s, inflight.Load())
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("shutdown did not finish cleanly: %v", err)
		}
		close(done)
	}()

	log.Printf("pod %s on node %s listening on %s", pod, node, addr)
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
	<-done
	log.Printf("shutdown complete: served %d requests", served.Load())
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

func durationEnv(k string, d time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(k)); err == nil {
		return v
	}
	return d
}

// fetchResult is one request's outcome, printed as a JSON line.
type fetchResult struct {
	Seq      int    `json:"seq"`
	AtMs     int64  `json:"at_ms"`
	Status   int    `json:"status"`
	ServedBy string `json:"served_by,omitempty"`
	Error    string `json:"error,omitempty"`
}

func fetch(args []string) int {
	fs := flag.NewFlagSet("fetch", flag.ExitOnError)
	url := fs.String("url", "", "URL to GET")
	count := fs.Int("count", 10, "number of requests")
	interval := fs.Duration("interval", 100*time.Millisecond, "time between request starts")
	timeout := fs.Duration("timeout", 2*time.Second, "per-request timeout")
	warmup := fs.Duration("warmup", 0, "first retry until one request answers 200, for at most this long (not counted)")
	_ = fs.Parse(args)
	if *url == "" || *count < 1 || *count > 1000000 {
		fmt.Fprintln(os.Stderr, "usage: demo-app fetch -url URL [-count N] [-interval D] [-timeout D] [-warmup D]")
		return 2
	}
	// A fresh connection per request, as a load balancer spreading requests would see them.
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	enc := json.NewEncoder(os.Stdout)
	// A new Service is reachable only once kube-proxy has programmed it; that delay is not what
	// the counted requests measure.
	if *warmup > 0 {
		until := time.Now().Add(*warmup)
		for {
			resp, err := client.Get(*url)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(until) {
				fmt.Printf("warm-up: no 200 answer from %s within %v\n", *url, *warmup)
				return 1
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	start := time.Now()
	ok, failed := 0, 0
	for i := 0; i < *count; i++ {
		next := start.Add(time.Duration(i) * *interval)
		time.Sleep(time.Until(next))
		r := fetchResult{Seq: i, AtMs: time.Since(start).Milliseconds()}
		resp, err := client.Get(*url)
		if err != nil {
			r.Error = err.Error()
		} else {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			r.Status = resp.StatusCode
			r.ServedBy = resp.Header.Get("X-Served-By")
		}
		if r.Status == http.StatusOK {
			ok++
		} else {
			failed++
		}
		_ = enc.Encode(r)
	}
	fmt.Printf("fetch done: ok=%d failed=%d\n", ok, failed)
	return 0
}

func otlpSink() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		log.Printf("otlp: %s %s content-type=%q bytes=%d", r.Method, r.URL.Path, r.Header.Get("Content-Type"), len(body))
		// An empty Export*ServiceResponse is zero bytes of protobuf.
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})
	log.Printf("otlp sink listening on :4318")
	log.Fatal(http.ListenAndServe(":4318", nil))
}
