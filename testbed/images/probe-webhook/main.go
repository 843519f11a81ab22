// probe-webhook is a minimal admission webhook used to prove that the apiserver reaches a webhook
// through its Service's ClusterIP (kube-proxy) and TLS, exactly as it will reach pod-graceful-drain.
// It answers every AdmissionReview, logs each call, and denies the request when the object carries
// the label probe.testbed/deny=true, with a message naming the pod that answered; everything else is
// allowed. Certificate and key come from files (a mounted Secret).
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
)

type review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *request  `json:"request,omitempty"`
	Response   *response `json:"response,omitempty"`
}

type request struct {
	UID       string          `json:"uid"`
	Operation string          `json:"operation"`
	Name      string          `json:"name"`
	Namespace string          `json:"namespace"`
	Object    json.RawMessage `json:"object"`
	OldObject json.RawMessage `json:"oldObject"`
	UserInfo  struct {
		Username string `json:"username"`
	} `json:"userInfo"`
}

type response struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Result  *status `json:"status,omitempty"`
}

type status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	pod, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
		var rv review
		if err == nil {
			err = json.Unmarshal(body, &rv)
		}
		if err != nil || rv.Request == nil {
			http.Error(w, "expected an AdmissionReview", http.StatusBadRequest)
			return
		}
		obj := rv.Request.Object
		if len(obj) == 0 || string(obj) == "null" {
			obj = rv.Request.OldObject // DELETE carries the object in oldObject
		}
		var meta struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		_ = json.Unmarshal(obj, &meta)
		deny := meta.Metadata.Labels["probe.testbed/deny"] == "true"
		log.Printf("admission uid=%s op=%s object=%s/%s user=%s deny=%v",
			rv.Request.UID, rv.Request.Operation, rv.Request.Namespace, rv.Request.Name, rv.Request.UserInfo.Username, deny)
		resp := &response{UID: rv.Request.UID, Allowed: !deny}
		if deny {
			resp.Result = &status{Code: 403, Message: "denied by probe-webhook pod " + pod}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(review{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Response: resp})
	})
	log.Printf("probe-webhook %s listening on :8443", pod)
	log.Fatal(http.ListenAndServeTLS(":8443", envOr("TLS_CERT", "/tls/tls.crt"), envOr("TLS_KEY", "/tls/tls.key"), nil))
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}
