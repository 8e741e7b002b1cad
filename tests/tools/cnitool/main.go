// Command cnitool does with a CNI network what a container runtime does, through libcni (the
// library containerd and CRI-O use), for nodeswitch's tests and demo.
//
// Usage:
//
//	cnitool add|check|del CONFLIST NETNS CONTAINERID [IFNAME]
//	cnitool status CONFLIST
//	cnitool gc CONFLIST [CONTAINERID/IFNAME,...]
//	cnitool validate CONFLIST
//
// The environment gives CNI_PATH (plugin directories, colon-separated), CNI_ARGS (K=V;...,
// passed to every plugin) and CNI_CACHE_DIR (libcni's result cache). add prints the result
// as libcni returns it (parsed and converted to the list's cniVersion, so an invalid result
// fails here); every other command prints nothing on success. A failure prints the CNI error
// as JSON ({"code", "msg", "details"}; code 0 for an error of libcni's own) and exits 1.
//
// libcni 1.1.2 (Debian's) speaks spec 1.0.0 and has no STATUS or GC: those two run each
// plugin of the list through libcni's invoke package, with the list's name and
// cniVersion 1.1.0 in its config (and cni.dev/valid-attachments for gc), as the spec says.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"code": 0, "msg": err.Error(), "details": ""}
	var te *types.Error
	if errors.As(err, &te) {
		out["code"] = te.Code
		out["msg"] = te.Msg
		out["details"] = te.Details
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cnitool add|check|del CONFLIST NETNS CONTAINERID [IFNAME] | status CONFLIST | gc CONFLIST [ID/IFNAME,...] | validate CONFLIST")
	os.Exit(2)
}

func pluginArgs() [][2]string {
	var out [][2]string
	for _, kv := range strings.Split(os.Getenv("CNI_ARGS"), ";") {
		if kv == "" {
			continue
		}
		p := strings.SplitN(kv, "=", 2)
		if len(p) != 2 {
			fail(fmt.Errorf("CNI_ARGS: %q is not K=V", kv))
		}
		out = append(out, [2]string{p[0], p[1]})
	}
	return out
}

// spec11 runs command (STATUS or GC) on every plugin of list, as a 1.1 runtime would.
func spec11(ctx context.Context, command string, list *libcni.NetworkConfigList, paths []string, extra map[string]interface{}) {
	for _, p := range list.Plugins {
		values := map[string]interface{}{"name": list.Name, "cniVersion": "1.1.0"}
		for k, v := range extra {
			values[k] = v
		}
		conf, err := libcni.InjectConf(p, values)
		if err != nil {
			fail(err)
		}
		bin, err := invoke.FindInPath(p.Network.Type, paths)
		if err != nil {
			fail(err)
		}
		args := &invoke.Args{Command: command, Path: strings.Join(paths, string(os.PathListSeparator))}
		if err := invoke.ExecPluginWithoutResult(ctx, bin, conf.Bytes, args, nil); err != nil {
			fail(err)
		}
	}
}

func main() {
	if len(os.Args) < 3 {
		usage()
	}
	cmd, file := os.Args[1], os.Args[2]
	bytes, err := os.ReadFile(file)
	if err != nil {
		fail(err)
	}
	list, err := libcni.ConfListFromBytes(bytes)
	if err != nil {
		fail(err)
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	cni := libcni.NewCNIConfigWithCacheDir(paths, os.Getenv("CNI_CACHE_DIR"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	switch cmd {
	case "status":
		spec11(ctx, "STATUS", list, paths, nil)
		return
	case "gc":
		valid := []map[string]string{}
		if len(os.Args) > 3 && os.Args[3] != "" {
			for _, a := range strings.Split(os.Args[3], ",") {
				p := strings.SplitN(a, "/", 2)
				if len(p) != 2 {
					fail(fmt.Errorf("%q is not CONTAINERID/IFNAME", a))
				}
				valid = append(valid, map[string]string{"containerID": p[0], "ifname": p[1]})
			}
		}
		spec11(ctx, "GC", list, paths, map[string]interface{}{"cni.dev/valid-attachments": valid})
		return
	case "validate":
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			fail(err)
		}
		return
	}
	if len(os.Args) < 5 {
		usage()
	}
	rt := &libcni.RuntimeConf{
		ContainerID: os.Args[4],
		NetNS:       os.Args[3],
		IfName:      "eth0",
		Args:        pluginArgs(),
	}
	if len(os.Args) > 5 {
		rt.IfName = os.Args[5]
	}
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		usage()
	}
}
