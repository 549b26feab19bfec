import json,sys,time,urllib.request
url=sys.argv[1]
notes="".join(f"Note {i}: The harbour of Aldmere was built in {1700+i} by guild number {i}; its lighthouse is {30+i} metres tall.\n" for i in range(45))
def ttft(q):
    body=json.dumps({"messages":[{"role":"system","content":"Answer from these notes only.\n"+notes},{"role":"user","content":q}],"max_tokens":8,"temperature":0,"stream":True,"stream_options":{"include_usage":True}}).encode()
    t=time.time(); first=None; usage=None
    with urllib.request.urlopen(urllib.request.Request(url,body,{"content-type":"application/json"})) as r:
        for line in r:
            line=line.decode().strip()
            if not line.startswith("data:") or line.endswith("[DONE]"): continue
            d=json.loads(line[5:])
            if d.get("usage"): usage=d["usage"]
            ch=d.get("choices") or []
            if ch and (ch[0].get("delta") or {}).get("content") and first is None: first=time.time()-t
    return first,usage
for q in ["When was the harbour built?","How tall is the lighthouse?","Which guild built it?"]:
    f,u=ttft(q); print(f"{q:35s} ttft {f*1000:7.1f} ms  usage {u}")
