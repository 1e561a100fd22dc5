# A sender with one message in flight (most HL7 interfaces): one MLLP connection, the next
# ORU^R01 only after the last one's ACK. Prints msg/s and ACK p50/p99. Synthetic data only.
#   python3 loadtest/scripts/lone_sender.py 127.0.0.1 2575 5000
import socket
import sys
import time

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = socket.create_connection((host, port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
latencies, pending, started = [], b"", time.perf_counter()
for i in range(n):
    bed = i % 50
    message = "\r".join([
        f"MSH|^~\\&|MON|ICU|VIGIL|HOSP|20260102030405+0000||ORU^R01^ORU_R01|LONE-{i}-{started}|P|2.5.1",
        f"PID|||LONE-{bed}^^^HOSP^MR||Lone^Pat||19700101|F",
        f"PV1||I|ICU^{bed}^A",
        "OBR|1|X^MON|X^MON|182777000^monitoring of patient^SCT|||20260102030405+0000",
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|80|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R",
        "OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R",
    ]) + "\r"
    sent = time.perf_counter()
    conn.sendall(b"\x0b" + message.encode() + b"\x1c\r")
    while b"\x1c\r" not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        pending += chunk
    ack, pending = pending.split(b"\x1c\r", 1)
    if b"MSA|AA" not in ack and b"MSA|CA" not in ack:
        sys.exit(f"not accepted: {ack!r}")
    latencies.append(time.perf_counter() - sent)
elapsed = time.perf_counter() - started
latencies.sort()
print(f"lone sender: {n} messages in {elapsed:.2f} s = {n / elapsed:.0f} msg/s; "
      f"ACK p50 {latencies[n // 2] * 1e3:.2f} ms, p99 {latencies[int(n * 0.99)] * 1e3:.2f} ms")
