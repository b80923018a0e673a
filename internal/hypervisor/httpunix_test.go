package hypervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAPIAgainstNetHTTP runs the client against Go's own HTTP server on a
// unix socket: every framing that server sends (Content-Length, chunked,
// no body), errors, and the request it must receive.
func TestAPIAgainstNetHTTP(t *testing.T) {
	dir, err := os.MkdirTemp("/tmp", "api") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 100<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /vm.create", func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil || body["cpus"] != 2.0 {
			http.Error(w, "bad request body", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /vm.info", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"state":"Running","config":{"oem_strings":["secret"]}}`)
	})
	mux.HandleFunc("GET /chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 4 { // flushed writes make net/http chunk the answer
			io.WriteString(w, big[:len(big)/4])
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("PUT /fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"fault_message":"The VM is not booted"}`, http.StatusInternalServerError)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()

	api := NewAPI(sock)
	if err := api.Do("PUT", "/vm.create", map[string]any{"cpus": 2}, nil); err != nil {
		t.Errorf("PUT with a body, 204: %v", err)
	}
	if err := api.Do("PUT", "/vm.create", map[string]any{"cpus": 3}, nil); err == nil || !strings.Contains(err.Error(), "HTTP 400: bad request body") {
		t.Errorf("400: %v", err)
	}
	if st, err := api.State("/vm.info"); err != nil || st != "Running" {
		t.Errorf("State = %q, %v", st, err)
	}
	var got string
	status, b, err := roundTrip(sock, api.Timeout, "GET", "/chunked", nil)
	if got = string(b); err != nil || status != 200 || got != big {
		t.Errorf("chunked answer: status %d, %d bytes, %v", status, len(got), err)
	}
	var ae *APIError
	if err := api.Do("PUT", "/fail", nil, nil); !errors.As(err, &ae) || ae.Status != 500 || !strings.Contains(ae.Body, "The VM is not booted") {
		t.Errorf("500: %v", err)
	}
	if err := api.Do("GET", "/nowhere", nil, nil); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("404: %v", err)
	}
	if err := NewAPI(filepath.Join(dir, "none.sock")).Do("GET", "/", nil, nil); err == nil || !strings.Contains(err.Error(), "GET /: dial unix") {
		t.Errorf("no socket: %v", err)
	}
}

// TestReadResponseFraming covers answers net/http's server does not send
// but a hypervisor may: a body ended by the connection's close, trailers.
func TestReadResponseFraming(t *testing.T) {
	tests := []struct{ raw, body string }{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloIGNORED", "hello"},
		{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", "until close"},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", "abcde"},
		{"HTTP/1.0 204 No Content\r\n\r\n", ""},
	}
	for _, tt := range tests {
		_, b, err := readResponse(bufioReader(tt.raw))
		if err != nil || string(b) != tt.body {
			t.Errorf("%q: %q, %v", tt.raw, b, err)
		}
	}
	for _, bad := range []string{"", "SSH-2.0-OpenSSH\r\n", "HTTP/1.1 abc\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"} {
		if _, _, err := readResponse(bufioReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
