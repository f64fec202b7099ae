// layercheck reads a layer blob the way Go-based consumers (containerd, containers/image, umoci,
// go-containerregistry) do: compress/gzip (rejects trailing bytes after the stream) and archive/tar (PAX,
// SCHILY.xattr). It prints one line per entry and fails on anything those readers would reject.
//
//	layercheck BLOB            list entries
//	layercheck -digest BLOB    also print the sha256 of the uncompressed stream (the diff_id)
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	digest := flag.Bool("digest", false, "print the diff_id")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: layercheck [-digest] BLOB")
		os.Exit(2)
	}
	if err := check(flag.Arg(0), *digest); err != nil {
		fmt.Fprintln(os.Stderr, "layercheck:", err)
		os.Exit(1)
	}
}

func check(path string, digest bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("gzip header: %w", err)
	}
	h := sha256.New()
	tr := tar.NewReader(io.TeeReader(zr, h))
	seen := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("tar: %w", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if seen[name] {
			return fmt.Errorf("duplicate path %q", hdr.Name)
		}
		seen[name] = true
		if strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../") ||
			strings.Contains(name, "/../") {
			return fmt.Errorf("unsafe path %q", hdr.Name)
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse") {
				return fmt.Errorf("%q: GNU.sparse record %s", hdr.Name, k)
			}
		}
		if hdr.Uname != "" || hdr.Gname != "" {
			return fmt.Errorf("%q: uname/gname %q/%q not empty", hdr.Name, hdr.Uname, hdr.Gname)
		}
		if hdr.ModTime.Nanosecond() != 0 || !hdr.AccessTime.IsZero() || !hdr.ChangeTime.IsZero() {
			return fmt.Errorf("%q: sub-second mtime or atime/ctime stored", hdr.Name)
		}
		n, err := io.Copy(io.Discard, tr)
		if err != nil {
			return fmt.Errorf("%q: data: %w", hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeReg && n != hdr.Size {
			return fmt.Errorf("%q: %d bytes of data, header says %d", hdr.Name, n, hdr.Size)
		}
		var xattrs []string
		for k, v := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xattrs = append(xattrs, strings.TrimPrefix(k, "SCHILY.xattr.")+"="+hex.EncodeToString([]byte(v)))
			}
		}
		sort.Strings(xattrs)
		fmt.Printf("%c %o %d:%d %d %q", hdr.Typeflag, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size, hdr.Name)
		if hdr.Linkname != "" {
			fmt.Printf(" -> %q", hdr.Linkname)
		}
		if len(xattrs) > 0 {
			fmt.Printf(" xattrs=%s", strings.Join(xattrs, ","))
		}
		fmt.Println()
	}
	// the rest of the gzip stream: the tar end blocks, then nothing (a second member or garbage fails)
	if _, err := io.Copy(h, zr); err != nil {
		return fmt.Errorf("after the tar stream: %w", err)
	}
	if digest {
		fmt.Printf("diff_id sha256:%s\n", hex.EncodeToString(h.Sum(nil)))
	}
	return nil
}
