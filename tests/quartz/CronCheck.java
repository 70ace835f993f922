// Parses a cron expression with Quartz's own CronExpression (the syntax of Databricks job
// schedules) and prints its next fire times as UTC instants, one a line.
// usage: java -cp quartz.jar CronCheck.java "<expression>" <time zone id> <ISO instant> <count>
import java.time.Instant;
import java.time.ZoneId;
import java.util.Date;
import java.util.TimeZone;
import org.quartz.CronExpression;

public class CronCheck {
    public static void main(String[] args) throws Exception {
        CronExpression cron = new CronExpression(args[0]);  // ParseException names the problem
        cron.setTimeZone(TimeZone.getTimeZone(ZoneId.of(args[1])));  // unknown ids throw
        Date next = Date.from(Instant.parse(args[2]));
        for (int i = 0; i < Integer.parseInt(args[3]); i++) {
            next = cron.getNextValidTimeAfter(next);
            System.out.println(next.toInstant());
        }
    }
}
