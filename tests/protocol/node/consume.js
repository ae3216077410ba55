// A kafkajs consumer group member (read_committed unless --uncommitted 1), from the beginning.
// Prints {"event":"assignment","partitions":[...]} at each join of the group and one
// {"event":"message",...} line per record. With --count N it leaves the group and exits after
// N records; without, it runs until SIGTERM, then leaves the group and exits 0.
'use strict'
const { args, client, emit, main, message } = require('./common')

main(async () => {
  const options = args()
  const count = options.count === undefined ? null : Number(options.count)
  const consumer = client(options.bootstrap, 'streams-test-consumer').consumer({
    groupId: options.group || `kafkajs-${process.pid}-${Date.now()}`,
    readUncommitted: options.uncommitted === '1',
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 200,
  })
  let received = 0
  let finish
  const finished = new Promise((resolve) => (finish = resolve))
  process.on('SIGTERM', () => finish())
  consumer.on(consumer.events.GROUP_JOIN, (event) => {
    const partitions = event.payload.memberAssignment[options.topic] || []
    emit({ event: 'assignment', partitions: [...partitions].sort((a, b) => a - b) })
  })
  consumer.on(consumer.events.CRASH, (event) => {
    process.stderr.write(`crash: ${event.payload.error}\n`)
    finish(event.payload.error)
  })
  await consumer.connect()
  await consumer.subscribe({ topic: options.topic, fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ partition, message: m }) => {
      emit(message(partition, m))
      received += 1
      if (count !== null && received >= count) finish()
    },
  })
  const error = await finished
  await consumer.disconnect()
  if (error) throw error
})
