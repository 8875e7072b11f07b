// Renders Go templates the way Argo CD's ApplicationSet controller does (text/template, its goTemplateOptions,
// executed on the generator's parameters), for tests/manifests/argocd.py. Reads a JSON list of
// {"template", "params", "options"} from stdin and writes the JSON list of results; any error exits non-zero.
// Argo CD also loads the sprig functions: a template that needs one fails here, loudly, rather than rendering wrong.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type job struct {
	Template string         `json:"template"`
	Params   map[string]any `json:"params"`
	Options  []string       `json:"options"`
}

func render(j job) (string, error) {
	t := template.New("")
	for _, option := range j.Options {
		t = t.Option(option)
	}
	parsed, err := t.Parse(j.Template)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	if err := parsed.Execute(&out, j.Params); err != nil {
		return "", err
	}
	return out.String(), nil
}

func main() {
	var jobs []job
	if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
		fmt.Fprintln(os.Stderr, "reading jobs:", err)
		os.Exit(2)
	}
	results := make([]string, 0, len(jobs))
	for _, j := range jobs {
		result, err := render(j)
		if err != nil {
			fmt.Fprintf(os.Stderr, "template %q: %v\n", j.Template, err)
			os.Exit(1)
		}
		results = append(results, result)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "writing results:", err)
		os.Exit(2)
	}
}
